"""shared_input_linear: several (LoRA) Linears of one input as one matmul, same values and gradients."""

import torch
from peft import LoraConfig, get_peft_model

from pipeline.kernels.fused_linear import lora_branches, shared_input_linear


class _FF(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Linear(16, 24, bias=False)
        self.w3 = torch.nn.Linear(16, 24, bias=False)
        self.w2 = torch.nn.Linear(24, 16, bias=False)


def _stacked_lora_model():
    torch.manual_seed(0)
    model = get_peft_model(_FF(), LoraConfig(r=4, lora_alpha=8, target_modules=["w1", "w3"], lora_dropout=0.0))
    model.add_adapter("second", LoraConfig(r=2, lora_alpha=2, target_modules=["w1"], lora_dropout=0.0))
    model.base_model.set_adapter(["default", "second"])  # both adapters active at once (stacked)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.5)
    model.base_model.set_adapter(["default", "second"])  # set_adapter also marks them trainable
    return model


def _grads(model, x):
    return [x.grad] + [p.grad for p in model.parameters() if p.requires_grad]


def test_stacked_adapters_and_shared_input_match_the_modules():
    model = _stacked_lora_model()
    ff = model.base_model.model
    x1 = torch.randn(3, 5, 16, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_()
    gate, up = shared_input_linear([ff.w1, ff.w3], x1)
    (gate.sin().sum() + (up * 2).cos().sum()).backward()
    fused = [g.clone() for g in _grads(model, x1)]
    model.zero_grad()
    torch.testing.assert_close(gate, ff.w1(x2))
    torch.testing.assert_close(up, ff.w3(x2))
    (ff.w1(x2).sin().sum() + (ff.w3(x2) * 2).cos().sum()).backward()
    plain = _grads(model, x2)
    assert len(fused) == 1 + 2 * 3  # x, w1 (two adapters) and w3 (one) A and B
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)  # fp32, another summation order
    assert ff.w1.base_layer.weight.grad is None  # the frozen base never gets a gradient


def test_plain_linears_train_their_weights_through_the_stacked_matmul():
    torch.manual_seed(0)
    ff = _FF()
    x = torch.randn(7, 16)
    gate, up = shared_input_linear([ff.w1, ff.w3], x)
    (gate * up).sum().backward()
    g1, g3 = ff.w1.weight.grad.clone(), ff.w3.weight.grad.clone()
    ff.zero_grad()
    (ff.w1(x) * ff.w3(x)).sum().backward()
    torch.testing.assert_close(g1, ff.w1.weight.grad)
    torch.testing.assert_close(g3, ff.w3.weight.grad)


def test_unsupported_modules_fall_back_to_their_own_forward():
    biased = torch.nn.Linear(16, 4, bias=True)
    assert lora_branches(biased) is None
    x = torch.randn(2, 16)
    torch.testing.assert_close(shared_input_linear([biased], x)[0], biased(x))
    dora = get_peft_model(_FF(), LoraConfig(r=2, target_modules=["w2"], use_dora=True)).base_model.model.w2
    assert lora_branches(dora) is None


def test_glu_linear_and_stacked_outputs_fall_back_exactly_where_the_kernels_do_not_apply():
    """On the CPU (no Triton interpreter) glu_linear is w2(silu(gate) * up) and stacked=True the
    outputs side by side: for LoRA, a plain model (full fine-tuning), a trainable base, eval mode and a
    biased w2. (The kernels' own path is checked in tests/test_lora_dropout.py.)"""
    from pipeline.kernels.fused_linear import glu_linear

    torch.manual_seed(0)
    lora = get_peft_model(_FF(), LoraConfig(r=4, lora_alpha=8, target_modules=["w1", "w2", "w3"], lora_dropout=0.0))
    trainable_base = get_peft_model(_FF(), LoraConfig(r=2, target_modules=["w1", "w2", "w3"]))
    for p in trainable_base.parameters():
        p.requires_grad_(True)
    biased = _FF()
    biased.w2 = torch.nn.Linear(24, 16, bias=True)
    models = [lora.base_model.model, _FF(), trainable_base.base_model.model, lora.eval().base_model.model, biased]
    x = torch.randn(3, 16)
    for ff in models:
        (gate_up,) = shared_input_linear([ff.w1, ff.w3], x, stacked=True)
        torch.testing.assert_close(gate_up, torch.cat([ff.w1(x), ff.w3(x)], -1))
        torch.testing.assert_close(glu_linear(ff.w2, gate_up), ff.w2(torch.nn.functional.silu(ff.w1(x)) * ff.w3(x)))
