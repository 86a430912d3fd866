"""A GPU fast path against the eager blocked path at model scale, judged by fp32 rounding itself.

At hundreds of tokens a parameter's gradient sums thousands of fp32 terms, and two exact paths that add them in
another order differ by more than any fixed tolerance fit for the tiny models. The yardstick is the naive reference
path, another exact fp32 computation of the same function: the fast path must stay as close to the blocked path
as the reference is (within `FACTOR` times), in the outputs and in every gradient. A wrong mask, a dropped block or
a wrong backward is off by orders of magnitude more.
"""

import torch

FACTOR = 10.0


def outputs_and_gradients(model, backend: str, inputs: dict, real: torch.Tensor):
    """last_hidden_state at the real positions and every parameter's gradient of mean(h^2), on `backend`."""
    model.config.attention_backend = backend
    model.zero_grad()
    hidden = model(**inputs).last_hidden_state[real]
    (hidden**2).mean().backward()
    return hidden.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_fast_path_within_rounding(model, fast: str, inputs: dict, real: torch.Tensor,
                                     output_tolerance: float = 1e-5) -> dict:
    """Asserts the fast path's output within `output_tolerance` of the blocked path's (rtol and atol), and
    max|fast - blocked| <= FACTOR * max|reference - blocked| (+ 1e-7 of the tensor's size) for the output and each
    gradient; returns {name: (fast difference, reference difference)} for the record."""
    blocked = outputs_and_gradients(model, "blocked", inputs, real)
    results = {backend: outputs_and_gradients(model, backend, inputs, real) for backend in (fast, "reference")}
    model.config.attention_backend = "auto"
    torch.testing.assert_close(results[fast][0], blocked[0], rtol=output_tolerance, atol=output_tolerance)
    pairs = {"output": (blocked[0], results[fast][0], results["reference"][0])}
    pairs |= {name: (grad, results[fast][1][name], results["reference"][1][name]) for name, grad in blocked[1].items()}
    figures, failures = {}, []
    for name, (base, fast_value, reference_value) in pairs.items():
        fast_diff = (fast_value - base).abs().max().item()
        reference_diff = (reference_value - base).abs().max().item()
        figures[name] = (fast_diff, reference_diff)
        if fast_diff > FACTOR * reference_diff + 1e-7 * base.abs().max().item():
            failures.append(f"{name}: {fast} differs by {fast_diff:.3g}, the reference by {reference_diff:.3g}")
    print("\n".join(f"{name}: {fast} {f:.3g} reference {r:.3g}" for name, (f, r) in figures.items()))
    assert not failures, "\n".join(failures)
    return figures


def lm_logits_and_gradients(model, backend: str, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple:
    """The logits and every parameter's gradient of the LM loss over the real tokens, on `backend` (tiny models:
    fixed fp32 tolerances serve)."""
    model.config.attention_backend = backend
    model.zero_grad()
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    output = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, use_cache=False,
                   return_logits=True)
    output.loss.backward()
    return output.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

