"""The naive loops are the spec: check them against the paper's literal code and fla's oracle."""
import torch
import torch.nn.functional as F

from rla_kernels import naive_recurrent_rdn, naive_recurrent_rla


def _inputs(B=2, T=11, H=3, K=8, V=6, dtype=torch.float64, v_scale=2.0):
    q = F.normalize(torch.randn(B, T, H, K, dtype=dtype), dim=-1)
    k = F.normalize(torch.randn(B, T, H, K, dtype=dtype), dim=-1)
    v = torch.randn(B, T, H, V, dtype=dtype) * v_scale
    g = F.logsigmoid(torch.randn(B, T, H, dtype=dtype))
    beta = torch.rand(B, T, H, dtype=dtype)
    gamma = torch.rand(B, T, H, dtype=dtype)
    return q, k, v, g, beta, gamma


def appendix_d_residual_linear_attention(q, k, v, alpha, beta, gamma):
    """The paper's Appendix D loop, transcribed (single head; inputs already L2-normalised)."""
    seq_len, head_dim = q.shape
    S = torch.zeros(head_dim, v.shape[1], dtype=q.dtype)
    R = torch.zeros(head_dim, v.shape[1], dtype=q.dtype)
    o = torch.zeros(seq_len, v.shape[1], dtype=q.dtype)
    for t in range(seq_len):
        qt, kt, vt = q[t : t + 1], k[t : t + 1], v[t : t + 1]
        rt = torch.clip(vt - kt @ S, min=-1, max=1)
        R = alpha[t] * R + gamma[t] * kt.T @ rt
        o[t : t + 1] = alpha[t] * qt @ S + gamma[t] * qt @ R
        S = alpha[t] * S + beta[t] * kt.T @ vt
    return o


def test_rla_matches_appendix_d_line_for_line():
    q, k, v, g, beta, gamma = _inputs()
    o, _ = naive_recurrent_rla(q, k, v, g, beta, gamma, scale=1.0, clip=1.0)
    for b in range(q.shape[0]):
        for h in range(q.shape[2]):
            ref = appendix_d_residual_linear_attention(
                q[b, :, h], k[b, :, h], v[b, :, h], g[b, :, h].exp(), beta[b, :, h], gamma[b, :, h]
            )
            torch.testing.assert_close(o[b, :, h], ref, rtol=0, atol=1e-12)


def test_clip_saturates_in_these_inputs():
    # Guard for the test above: with v scaled up, most residuals are clipped, so clipping is exercised.
    q, k, v, g, beta, gamma = _inputs(v_scale=4.0)
    o_clip, _ = naive_recurrent_rla(q, k, v, g, beta, gamma, clip=1.0)
    o_free, _ = naive_recurrent_rla(q, k, v, g, beta, gamma, clip=None)
    assert (o_clip - o_free).abs().max() > 1e-2


def test_rdn_with_residual_gated_off_is_fla_gated_delta_rule():
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    q, k, v, g, beta, gamma = _inputs(dtype=torch.float32)
    _, (S, R) = naive_recurrent_rdn(q, k, v, g, beta, torch.zeros_like(gamma), output_final_state=True)
    o_fla, S_fla = naive_recurrent_gated_delta_rule(q, k, v, beta, g, output_final_state=True)
    torch.testing.assert_close(S, S_fla, rtol=1e-5, atol=1e-5)
    assert R.abs().max() == 0


def test_rdn_output_reads_previous_state():
    # gamma = 0: o_t = scale * a_t S_{t-1}^T q_t, with S_{t-1} taken from fla's oracle run on the prefix.
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    q, k, v, g, beta, gamma = _inputs(T=6, dtype=torch.float32)
    o, _ = naive_recurrent_rdn(q, k, v, g, beta, torch.zeros_like(gamma), scale=0.5)
    assert o[:, 0].abs().max() == 0
    for t in range(1, 6):
        _, S_prev = naive_recurrent_gated_delta_rule(
            q[:, :t], k[:, :t], v[:, :t], beta[:, :t], g[:, :t], output_final_state=True
        )
        expected = 0.5 * g[:, t].exp()[..., None] * torch.einsum("bhk,bhkv->bhv", q[:, t], S_prev)
        torch.testing.assert_close(o[:, t], expected, rtol=1e-5, atol=1e-5)


def test_varlen_equals_separate_sequences_and_states_chain():
    q, k, v, g, beta, gamma = _inputs(B=1, T=12)
    cu = torch.tensor([0, 5, 12])
    for fn in (naive_recurrent_rla, naive_recurrent_rdn):
        o, (S, R) = fn(q, k, v, g, beta, gamma, cu_seqlens=cu, output_final_state=True)
        piece = lambda a, b: [x[:, a:b] for x in (q, k, v, g, beta, gamma)]  # noqa: E731
        o2, (S2, R2) = fn(*piece(5, 12), output_final_state=True)
        torch.testing.assert_close(o[:, 5:], o2)
        torch.testing.assert_close(S[1:], S2)
        # chained: first 3 tokens of the second sequence, then the rest from the carried state
        oa, st = fn(*piece(5, 8), output_final_state=True)
        ob, st2 = fn(*piece(8, 12), initial_state=st, output_final_state=True)
        torch.testing.assert_close(torch.cat([oa, ob], 1), o2)
        torch.testing.assert_close(st2[1], R2)
