"""The model-free step clusterer (TF-IDF of character n-grams): what it groups and what it keeps apart."""

from __future__ import annotations

import asyncio

from verifiers.embeddings import LexicalClusterer


def clusters(texts, threshold=0.05):
    return asyncio.run(LexicalClusterer().clusters(None, texts, threshold))


def test_equal_steps_share_a_cluster_and_steps_differing_in_a_number_do_not():
    steps = ["37+48=85\n", "37+48=85\n", "37+48=86\n", "85*3=255\n"]
    labels = clusters(steps)
    assert labels[0] == labels[1]
    assert len({labels[0], labels[2], labels[3]}) == 3
    assert labels == [0, 0, 1, 2]  # labels in order of first appearance, as the embedder's


def test_a_looser_threshold_merges_near_duplicates():
    steps = ["37+48=85 so far\n", "37+48=86 so far\n"]
    assert clusters(steps, threshold=0.05) == [0, 1]
    assert clusters(steps, threshold=0.9) == [0, 0]


def test_edge_cases_need_no_model():
    assert clusters([]) == []
    assert clusters(["only"]) == [0]
    assert clusters(["", " ", ""]) == [0, 0, 0]  # blank steps: nothing to tell them apart


def test_a_blank_step_among_others_is_a_cluster_of_its_own():
    # A step cut by its token bound right before the delimiter leaves an empty next step ("\n\n" once the
    # delimiter is put back): its TF-IDF vector was zero and scipy refused the whole set (ETS failed the request).
    labels = clusters(["\n\n", "Befa dapar x_{10}=6042.", "Batan dapar x_{10}=6042.", " "])
    assert labels[0] == labels[3] == 0
    assert 0 not in labels[1:3]
