"""Models of the morph tests: one per family the tracer supports, and helpers comparing a
model with its shrunk / widened copy (outputs and input gradients)."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

RTOL = 1e-5  # the bound on the max relative output difference


class ResBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c1 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm1d(c)
        self.c2 = nn.Conv1d(c, c, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm1d(c)

    def forward(self, x):
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResCatCNN(nn.Module):
    """Residual adds over two blocks, a concat of two branches, batch norm over the concat,
    max pooling and a flatten into a linear layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(1, 16, 5, padding=2)
        self.bn = nn.BatchNorm1d(16)
        self.block1, self.block2 = ResBlock(16), ResBlock(16)
        self.a = nn.Conv1d(16, 8, 3, padding=1)
        self.b = nn.Conv1d(16, 12, 1)
        self.bnc = nn.BatchNorm1d(20)
        self.fc = nn.Linear(20 * 10, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        x = F.max_pool1d(self.block2(self.block1(x)), 4)
        y = torch.cat([self.a(x), self.b(x)], 1)
        return self.fc(F.relu(self.bnc(y)).flatten(1))


class MLP(nn.Module):
    def __init__(self, sizes=(6, 12, 10, 3), bn=True):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                if bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Mobile(nn.Module):
    """Pointwise → depthwise → pointwise (2-D), with batch norms and ReLU6."""

    def __init__(self):
        super().__init__()
        self.pw1 = nn.Conv2d(3, 12, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(12)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.pw2 = nn.Conv2d(12, 8, 1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu6(self.bn1(self.pw1(x)))
        x = F.relu6(self.bn2(self.dw(x)))
        return self.head(self.pw2(x).mean((2, 3)))


class GPTBlock(nn.Module):
    """A GPT-style block (causal attention with head views, a 4·d MLP, pre-norm residuals)
    over token embeddings, and a language-model head."""

    def __init__(self, vocab=50, d=16, heads=2):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.fc = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, idx):
        x = self.emb(idx)
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q = q.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        k = k.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        v = v.view(b, t, self.heads, c // self.heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return self.head(x + self.fc2(F.gelu(self.fc(self.ln2(x)))))


def randomise_norms(model, seed=0):
    """Non-trivial batch-norm statistics and affine parameters (eval mode then matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g))
    return model


def families():
    """(name, model in eval mode, example input) for every supported family."""
    torch.manual_seed(0)
    return [
        ("mlp", randomise_norms(MLP()).eval(), torch.randn(16, 6)),
        ("res_cat_cnn", randomise_norms(ResCatCNN()).eval(), torch.randn(8, 1, 40)),
        ("mobile", randomise_norms(Mobile()).eval(), torch.randn(4, 3, 6, 6)),
        ("gpt", GPTBlock().eval(), torch.randint(0, 50, (4, 12))),
    ]


def rel_diff(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def assert_same_function(new, old, x, rtol=RTOL):
    """Outputs, and (for real inputs) the gradients of a fixed projection of the outputs
    with respect to the input, agree to ``rtol`` relative to the largest value."""
    new, old = new.eval(), old.eval()
    if x.is_floating_point():
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = new(xa), old(xb)
        w = torch.randn(ya.shape, generator=torch.Generator().manual_seed(1))
        (ya * w).sum().backward()
        (yb * w).sum().backward()
        assert rel_diff(ya.detach(), yb.detach()) <= rtol
        assert rel_diff(xa.grad, xb.grad) <= rtol
    else:
        with torch.no_grad():
            assert rel_diff(new(x), old(x)) <= rtol


def copy_of(model):
    return copy.deepcopy(model)
