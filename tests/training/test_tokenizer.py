from tasks import arithmetic as task
from training import tokenizer


def test_round_trip_one_token_per_character_and_single_tag_token():
    tok = tokenizer.build()
    p = task.generate("test", 1, seed=0)[0]
    text = task.prompt_for(p.question) + p.solution()
    enc = tok.encode(text)
    assert len(enc.ids) == len(text.encode())
    assert tok.decode(enc.ids) == text
    tag_ids = tok.encode(" " + tokenizer.STEP_TAG).ids
    assert len(tag_ids) == 2 and tag_ids[1] == tok.token_to_id(tokenizer.STEP_TAG)
