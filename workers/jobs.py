"""Ray's job server (the Ray dashboard's job API) for evaluation jobs: the only place the service talks to it."""

from __future__ import annotations

from typing import Any

from orchestrator.errors import EngineUnavailable
from orchestrator.protocols import JobInfo


class RayJobs:
    """Submit, inspect, read and stop jobs through Ray's JobSubmissionClient at ``address`` (blocking calls)."""

    def __init__(self, address: str) -> None:
        self.address = address

    def _client(self) -> Any:
        from ray._raylet import AuthenticationTokenLoader
        from ray.exceptions import AuthenticationError
        from ray.job_submission import JobSubmissionClient

        try:
            # The cluster's token wherever Ray looks for it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token),
            # sent whatever this process's own RAY_AUTH_MODE is: a job server with token auth on (`ray start --head`
            # turns it on when it finds ~/.ray/auth_token) refuses a client without it; one with it off ignores it.
            headers = AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True)
            return JobSubmissionClient(self.address, headers=headers)
        except AuthenticationError as err:  # no token where one is needed, the wrong one, or an unreadable RAY_AUTH_TOKEN_PATH
            raise EngineUnavailable(f"Ray token authentication with the job server at {self.address} failed: {err.message}") from None
        except Exception as err:  # noqa: BLE001 - any failure to reach the job server means the same to the caller
            raise EngineUnavailable(
                f"the Ray job server at {self.address} is not reachable ({type(err).__name__}): start one with `ray start --head` "
                "(docs/evaluations.md, \"As a Ray job\"), or set TTS_JOBS_ADDRESS to a cluster's dashboard"
            ) from None

    def submit(self, *, entrypoint: str, job_id: str, env: dict[str, str], metadata: dict[str, str]) -> None:
        try:
            self._client().submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": env}, metadata=metadata)
        except RuntimeError as err:  # the job server answered, but cannot take the job now
            raise EngineUnavailable(f"the Ray job server refused the job: {str(err).strip()[:300]}", retry_after=5) from None

    def info(self, job_id: str) -> JobInfo | None:
        try:
            i = self._client().get_job_info(job_id)
        except RuntimeError:
            return None
        status = i.status.value if hasattr(i.status, "value") else str(i.status)
        return JobInfo(id=i.submission_id, status=status, message=i.message or "", entrypoint=i.entrypoint, metadata=dict(i.metadata or {}))

    def logs(self, job_id: str) -> str:
        return self._client().get_job_logs(job_id)

    def stop(self, job_id: str) -> None:
        self._client().stop_job(job_id)
