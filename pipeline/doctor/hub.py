"""Hub rows: a token is present, the Hub answers, the model's licence is accepted.

`huggingface_hub.auth_check` asks the Hub whether this token may download the repository; its
own error classes say why not. Offline (HF_HUB_OFFLINE, or no route to huggingface.co) is found
in a few seconds, before any request is made. Hub problems are ✗ only when the model still has to
be downloaded; with the files already here they are ⚠.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.doctor.row import FAIL, PASS, WARN, Row, guarded
from pipeline.data.hub import unreachable_reason

GROUP = "hub"


def model_page(repo: str) -> str:
    return f"https://huggingface.co/{repo}"


def token_row(repo: str, needed: bool) -> Row:
    import huggingface_hub

    if huggingface_hub.get_token():
        return Row(GROUP, "token", PASS, "a Hugging Face token is set (HF_TOKEN or huggingface-cli login)")
    status = FAIL if needed else WARN
    return Row(GROUP, "token", status, f"no Hugging Face token: {repo} is gated and needs one to download",
               f"Accept the licence at {model_page(repo)} and set HF_TOKEN to a token of that account.")


def access_row(repo: str, needed: bool) -> Row:
    """Reachable and licence accepted, with huggingface_hub's errors mapped to advice."""
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    bad = FAIL if needed else WARN
    why_not_needed = "" if needed else " (the model files are already here, so nothing has to be downloaded)"
    offline = unreachable_reason()
    if offline:
        return Row(GROUP, "access", bad, f"Hub not checked: {offline}{why_not_needed}",
                   "Download the model where huggingface.co is reachable (bash setup.sh), or copy the "
                   "checkpoint folder here.")
    token = huggingface_hub.get_token()
    try:
        huggingface_hub.auth_check(repo, token=token)
    except hf_errors.GatedRepoError:
        return Row(GROUP, "access", bad, f"{repo}: licence not accepted for this token{why_not_needed}",
                   f"Accept the licence at {model_page(repo)} and set HF_TOKEN to a token of that account.")
    except hf_errors.RepositoryNotFoundError:
        # The Hub answers "not found" for a gated repository when no (valid) token is sent.
        return Row(GROUP, "access", bad, f"{repo}: not found or needs a login{why_not_needed}",
                   f"Set HF_TOKEN (a token whose account accepted the licence at {model_page(repo)}) "
                   "and check base_model.repo.")
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled) as exc:
        return Row(GROUP, "access", bad, f"Hub unreachable: {exc}{why_not_needed}",
                   "Download the model where huggingface.co is reachable (bash setup.sh).")
    except hf_errors.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            return Row(GROUP, "access", bad, f"the Hub refused the token (401){why_not_needed}",
                       f"Set HF_TOKEN to a valid token whose account accepted the licence at {model_page(repo)}.")
        return Row(GROUP, "access", bad, f"the Hub answered an error: {str(exc).splitlines()[0][:160]}",
                   "Try again later; https://status.huggingface.co shows outages.")
    except OSError as exc:  # raw connection errors and timeouts of the HTTP client
        return Row(GROUP, "access", bad, f"Hub unreachable: {type(exc).__name__}: {exc}{why_not_needed}",
                   "Download the model where huggingface.co is reachable (bash setup.sh).")
    return Row(GROUP, "access", PASS, f"reachable; this token may download {repo} (licence accepted)")


def hub_rows(repo: str, model_dir: Path) -> list[Row]:
    from pipeline.model.checkpoints import HUB_FILES

    needed = not all((Path(model_dir) / name).is_file() for name in HUB_FILES)
    return [guarded(GROUP, "token", lambda: token_row(repo, needed)),
            guarded(GROUP, "access", lambda: access_row(repo, needed))]
