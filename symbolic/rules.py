"""The famous simplifications: named, so a derivation can say which ones it used and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    """A simplification or stable form the derivation applied."""

    name: str
    result: str  # the formula it yields, in plain text
    reason: str  # one line: why it holds or why it is used


RULES: dict[str, Rule] = {rule.name: rule for rule in (
    Rule("softmax_cross_entropy", "δ = softmax(z) − y",
         "∂/∂z [logsumexp(z) − z_y] = softmax(z) − onehot(y): the softmax Jacobian cancels "
         "against the log, so δ is prediction minus target"),
    Rule("sigmoid_bce", "δ = σ(z) − y",
         "binary cross-entropy of σ(z) is softplus(z) − y z (logits form), whose derivative "
         "is σ(z) − y; it stays finite for large |z|"),
    Rule("sigmoid_derivative", "σ'(z) = σ(z)(1 − σ(z))",
         "the derivative of the logistic function reuses its value"),
    Rule("tanh_derivative", "tanh'(z) = 1 − tanh²(z)",
         "the derivative of tanh reuses its value"),
    Rule("relu_derivative", "relu'(z) = step(z), relu'(0) = 0",
         "relu is not differentiable at 0; symgrad uses the subgradient 0 there, as PyTorch does"),
    Rule("logsumexp", "log Σ e^{z_j} = m + log Σ e^{z_j − m}, m = max z",
         "subtracting the maximum keeps every exponential ≤ 1, so nothing overflows"),
    Rule("log_softmax", "log softmax(z) = z − logsumexp(z)",
         "the log of a softmax is computed without forming the softmax, which could underflow"),
)}
