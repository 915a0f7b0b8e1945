"""The README's Python snippets run as pasted, and what they claim holds.

After each block runs, its variables are checked: the API block's mask is the picture drawn in
"The mask" and its output matches the reference; the groups/window and FlexAttention blocks' outputs match the
fp64 oracle (tests/oracle.py) from its ids; the transformers block's patched model lets the
image tokens see their question and nobody see the answer early; the AKI block's language model
runs MMA attention.
"""
import pathlib
import re

import pytest
import torch

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
# every Python block of docs/*.md runs as pasted too, with the same checks
DOC_BLOCKS = [(path.name, b) for path in sorted((README.parent / "docs").glob("*.md"))
              for b in re.findall(r"```python\n(.*?)```", path.read_text(), re.S)]


def _picture():
    """The 0/1 mask drawn under '## The mask' (rows 'i=.. 1 . 1 ...')."""
    section = TEXT[TEXT.index("## The mask"):]
    drawing = re.search(r"```\n(.*?)```", section, re.S).group(1)
    rows = [line.split()[2:] for line in drawing.splitlines() if line.startswith("i=")]
    return torch.tensor([[c == "1" for c in r] for r in rows])


def check_api(ns):
    from mma_kernels import MMAMask

    mask, out, ref = ns["mask"], ns["out"], ns["ref"]
    assert isinstance(mask, MMAMask)
    picture = _picture()
    if mask.seq_len == picture.shape[0]:
        assert torch.equal(mask.to_dense()[0], picture), "the snippet's mask is not the README's picture"
    assert (out - ref).abs().max() < 1e-5
    assert ns["q"].grad is not None and torch.isfinite(ns["q"].grad).all()


def check_groups_window(ns, block):
    """The groups/window snippet: both outputs equal the fp64 oracle from its raw ids."""
    import oracle

    window = int(re.search(r"window=(\d+)", block)[1])
    policy = re.search(r'[(, ]policy="(\w+)"', block)[1]
    group_policy = re.search(r'group_policy="(\w+)"', block)[1]
    q, k, v = ns["q"], ns["k"], ns["v"]
    for out, w in ((ns["full"], None), (ns["local"], window)):
        ok = oracle.allowed(ns["mod"], ns["seg"], None, policy, grp=ns["grp"], group_policy=group_policy, window=w)
        ref, _ = oracle.attention64(q, k, v, ok, q.shape[-1] ** -0.5)
        assert (out.double() - ref).abs().max() < 1e-5, f"window={w}"


def check_flex(ns):
    """The FlexAttention snippet: backend="flex" and the user's own flex_attention call with the BlockMask
    both equal the fp64 oracle from the snippet's ids, and the lse is finite on every (non-padding) row."""
    import oracle

    mod = ns["modality_ids"]
    q, k, v = ns["q"], ns["k"], ns["v"]
    ok = oracle.allowed(mod, torch.zeros_like(mod), None, "mma")  # the snippet: one segment, policy "mma"
    ref, _ = oracle.attention64(q, k, v, ok, q.shape[-1] ** -0.5)
    for name in ("out", "same"):
        assert (ns[name].double() - ref).abs().max() < 1e-5, name
    assert torch.isfinite(ns["lse"]).all()


def check_hf(ns, block):
    """Images see their question (changing the token after the last image changes the image positions'
    logits); nothing before the answer sees it (changing the answer's first token leaves every earlier
    logit unchanged). The answer starts after `answer_token_id`, or at the first supervised label."""
    image_id = int(re.search(r"image_token_(?:id|index)=(\d+)", block)[1])
    answer = re.search(r"answer_token_id=(\d+)", block)
    model, ids = ns["model"], ns["ids"][:1]
    extra = {k: ns[v][:1] for k, v in (("pixel_values", "pixels"), ("labels", "labels")) if v in ns}
    img = (ids[0] == image_id).nonzero().flatten()
    if answer is not None:
        hidden = int((ids[0] == int(answer[1])).nonzero().flatten()[0]) + 1
    else:
        hidden = int((extra["labels"][0] != -100).nonzero().flatten()[0])
    question = int(img.max()) + 1
    assert len(img) and question < hidden < ids.shape[1], "the snippet's ids changed shape"

    def logits(pos):
        x = ids.clone()
        if pos is not None:
            x[0, pos] = 3 if ids[0, pos] != 3 else 4
        with torch.no_grad():
            return model(input_ids=x, **extra).logits[0]

    base, seen, after = logits(None), logits(question), logits(hidden)
    assert not torch.allclose(seen[img], base[img]), "image tokens do not see their question"
    assert torch.equal(seen[:img.min()], base[:img.min()]), "text before the images sees the future"
    assert torch.equal(after[:hidden], base[:hidden]), "a token before the answer sees the answer"


def check_aki(ns):
    assert ns["model"].lang_model.config._attn_implementation == "mma"


def checks_for(block, ns):
    found = []
    if {"mask", "out", "ref", "q"} <= ns.keys():
        found.append(("api", lambda: check_api(ns)))
    if {"full", "local", "mod", "seg", "grp"} <= ns.keys() and "window=" in block:
        found.append(("groups_window", lambda: check_groups_window(ns, block)))
    if {"out", "same", "block_mask", "lse", "modality_ids"} <= ns.keys() and 'backend="flex"' in block:
        found.append(("flex", lambda: check_flex(ns)))
    if "apply_mma(" in block and {"model", "ids"} <= ns.keys() and re.search(r"image_token_(id|index)=", block) \
            and ("answer_token_id=" in block or "labels" in ns):
        found.append(("hf", lambda: check_hf(ns, block)))
    if "AKIModel(" in block and hasattr(ns.get("model"), "lang_model"):
        found.append(("aki", lambda: check_aki(ns)))
    return found


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_snippet_runs(i, capsys):
    ns = {}
    exec(compile(BLOCKS[i], f"README.md block {i}", "exec"), ns)
    checks = dict(checks_for(BLOCKS[i], ns))
    # a block showing the op or the patch must be recognised, so that its claims are checked
    if "mma_attention(" in BLOCKS[i]:
        assert checks.keys() & {"api", "groups_window", "flex"}, \
            "an op snippet changed: update check_api/check_groups_window/check_flex"
    if "apply_mma(" in BLOCKS[i]:
        assert "hf" in checks, "the transformers snippet changed: update check_hf"
    for check in checks.values():
        check()


@pytest.mark.parametrize("i", range(len(DOC_BLOCKS)), ids=[f"{n}-{i}" for i, (n, _) in enumerate(DOC_BLOCKS)])
def test_docs_snippet_runs(i):
    name, block = DOC_BLOCKS[i]
    ns = {}
    exec(compile(block, f"docs/{name} block {i}", "exec"), ns)
    for check in dict(checks_for(block, ns)).values():
        check()
