"""Bad arguments to rla()/rdn(): one ValueError naming the argument, before anything runs."""
import pytest
import torch
import torch.nn.functional as F

from rla_kernels import rdn, rla
from rla_kernels.validation import check_shapes


def good_args(B=2, T=6, H=2, K=8, V=4):
    return dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
        g=F.logsigmoid(torch.randn(B, T, H)), beta=torch.rand(B, T, H), gamma=torch.rand(B, T, H),
    )


def states(N=2, H=2, K=8, V=4):
    return (torch.randn(N, H, K, V), torch.randn(N, H, K, V))


def packed():
    a = good_args(B=1, T=6)
    a["cu_seqlens"] = torch.tensor([0, 2, 6])
    return a


# (what is wrong, how to make the call, words the message must contain)
SHAPE_CASES = [
    ("q rank", lambda a: a.update(q=a["q"][0]), "q must be 4-D"),
    ("k shape", lambda a: a.update(k=a["k"][..., :4]), "k must have q's shape"),
    ("v batch", lambda a: a.update(v=a["v"][:1]), "v must be [B, T, H, V]"),
    ("g shape", lambda a: a.update(g=a["g"][:, :3]), "g must be [B, T, H]"),
    ("beta rank", lambda a: a.update(beta=a["beta"][..., None]), "beta must be [B, T, H]"),
    ("gamma heads", lambda a: a.update(gamma=a["gamma"][..., :1]), "gamma must be [B, T, H]"),
    ("integer v", lambda a: a.update(v=a["v"].long()), "v must be a floating-point tensor"),
    ("integer gate", lambda a: a.update(beta=(a["beta"] > 0.5).int()), "beta must be a floating-point"),
    ("mixed dtypes", lambda a: a.update(v=a["v"].double()), "q, k and v must share one dtype"),
    ("not a tensor", lambda a: a.update(g=0.5), "g must be a torch.Tensor"),
    ("q a list", lambda a: a.update(q=a["q"].tolist()), "q must be a torch.Tensor"),
    ("q an array", lambda a: a.update(q=a["q"].numpy()), "q must be a torch.Tensor"),
    ("q a list, triton asked", lambda a: a.update(q=a["q"].tolist(), backend="triton"), "q must be a torch.Tensor"),
    ("device", lambda a: a.update(v=a["v"].to("meta")), "v must be on q's device"),
    ("clip zero", lambda a: a.update(clip=0.0), "clip must be a finite positive number or None"),
    ("clip negative", lambda a: a.update(clip=-1), "clip must be a finite positive number or None"),
    ("clip bool", lambda a: a.update(clip=True), "clip must be a finite positive number or None"),
    ("scale string", lambda a: a.update(scale="0.1"), "scale must be a finite number or None"),
    ("clip inf", lambda a: a.update(clip=float("inf"), residual="tanh"), "clip must be a finite positive number"),
    ("clip nan", lambda a: a.update(clip=float("nan")), "clip must be a finite positive number"),
    ("scale nan", lambda a: a.update(scale=float("nan")), "scale must be a finite number or None"),
    ("scale inf", lambda a: a.update(scale=-float("inf")), "scale must be a finite number or None"),
    ("residual", lambda a: a.update(residual="huber"), "residual must be one of"),
    ("state shape", lambda a: a.update(initial_state=states(K=4)), "initial_state[0] (S) must be [N, H, K, V]"),
    ("state R shape", lambda a: a.update(initial_state=(states()[0], states(N=3)[1])), "initial_state[1] (R)"),
    ("state not pair", lambda a: a.update(initial_state=states()[0]), "initial_state must be None or a pair"),
    ("state a 1-tuple", lambda a: a.update(initial_state=states()[:1]),
     "initial_state must be None or a pair (S, R) of [N, H, K, V] tensors; got a tuple of 1: (a torch.float32 tensor "
     "of shape [2, 2, 8, 4] on cpu)"),
    ("state integer", lambda a: a.update(initial_state=(states()[0].int(), None)), "floating-point tensor or None"),
    ("backend name", lambda a: a.update(backend="cuda"), "backend must be one of"),
]


@pytest.mark.parametrize("op", [rla, rdn], ids=["rla", "rdn"])
@pytest.mark.parametrize("case,mutate,message", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_bad_argument_raises_value_error_naming_it(op, case, mutate, message):
    args = good_args()
    mutate(args)
    with pytest.raises(ValueError) as err:
        op(**args)
    assert message in str(err.value)


CU_CASES = [
    ("batch of two", lambda a: a.update(q=torch.randn(2, 6, 2, 8)), "batch size must be 1"),
    ("float cu", lambda a: a.update(cu_seqlens=a["cu_seqlens"].float()), "cu_seqlens must be a 1-D int32/int64"),
    ("2-D cu", lambda a: a.update(cu_seqlens=a["cu_seqlens"][None]), "cu_seqlens must be a 1-D int32/int64"),
    ("one entry", lambda a: a.update(cu_seqlens=torch.tensor([0])), "N >= 1"),
    ("not from 0", lambda a: a.update(cu_seqlens=torch.tensor([1, 2, 6])), "must start at 0"),
    ("short end", lambda a: a.update(cu_seqlens=torch.tensor([0, 2, 5])), "end at T=6"),
    ("decreasing", lambda a: a.update(cu_seqlens=torch.tensor([0, 4, 2, 6])), "never decrease"),
    ("list", lambda a: a.update(cu_seqlens=[0, 2, 6]), "cu_seqlens must be a 1-D int32/int64 tensor"),
    ("state count", lambda a: a.update(initial_state=states(N=1, H=2)), "[N, H, K, V] = [2, 2, 8, 4]"),
]


@pytest.mark.parametrize("case,mutate,message", CU_CASES, ids=[c[0] for c in CU_CASES])
def test_bad_cu_seqlens(case, mutate, message):
    args = packed()
    mutate(args)
    if case == "batch of two":
        args.update({name: torch.cat([x, x]) for name, x in args.items() if name not in ("q", "cu_seqlens")})
    with pytest.raises(ValueError) as err:
        rla(**args)
    assert message in str(err.value)


def test_good_arguments_pass_including_packed():
    rla(**good_args(), initial_state=states(), clip=None, scale=1)
    rdn(**packed(), initial_state=(None, states()[1]), residual="tanh", validate=True)


VALUE_CASES = [
    ("g positive", lambda a: a["g"].__setitem__((0, 1, 0), 0.3), "g is the log decay and must be <= 0"),
    ("beta above one", lambda a: a["beta"].__setitem__((1, 0, 1), 1.5), "beta must lie in [0, 1]"),
    ("gamma negative", lambda a: a["gamma"].__setitem__((0, 0, 0), -0.1), "gamma must lie in [0, 1]"),
    ("NaN in q", lambda a: a["q"].__setitem__((0, 2, 1, 3), float("nan")), "q must be finite"),
    ("inf in v", lambda a: a["v"].__setitem__((1, 2, 1, 3), float("inf")), "v must be finite"),
    ("NaN in state", lambda a: a.update(initial_state=(states()[0] * float("nan"), None)), "initial_state[0] must be finite"),
]


@pytest.mark.parametrize("case,mutate,message", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_validate_checks_values(case, mutate, message):
    args = good_args()
    mutate(args)
    rla(**args)  # values are not read by default: no error, no device sync
    with pytest.raises(ValueError) as err:
        rla(**args, validate=True)
    assert message in str(err.value)


def test_triton_limits_are_checked_before_launch():
    args = good_args(K=320)
    with pytest.raises(ValueError, match="K <= 256"):
        check_shapes(*args.values(), None, 1.0, "clip", None, None, "triton")
    args = {name: x.double() for name, x in good_args().items()}
    with pytest.raises(ValueError, match="triton backend takes dtypes"):
        check_shapes(*args.values(), None, 1.0, "clip", None, None, "triton")


@pytest.mark.parametrize("op", [rla, rdn], ids=["rla", "rdn"])
def test_numpy_scalars_are_numbers(op):
    """scale and clip as numpy scalars (float32 or float64) are read as the same Python floats."""
    np = pytest.importorskip("numpy")
    args = good_args()
    o_ref, _ = op(**args, scale=0.25, clip=0.5, backend="torch")
    for t in (np.float32, np.float64):
        o, _ = op(**args, scale=t(0.25), clip=t(0.5), backend="torch")
        assert torch.equal(o, o_ref)


@pytest.mark.parametrize("op", [rla, rdn], ids=["rla", "rdn"])
@pytest.mark.parametrize("backend", ["torch", "triton", "naive"])
@pytest.mark.parametrize("B,T", [(0, 5), (2, 0)])
def test_calls_without_tokens_return_empty_outputs_and_carry_the_states(op, backend, B, T):
    """No tokens (an empty batch, or zero-length sequences) is no work on every backend: an empty o and the states
    handed back unchanged (the triton launchers divided by zero on an empty batch, the oracle's cat failed)."""
    args = good_args(B=B, T=T)
    init = states(N=B)
    o, (S, R) = op(**args, initial_state=init, output_final_state=True, backend=backend)
    assert o.shape == (B, T, 2, 4)
    assert torch.equal(S, init[0]) and torch.equal(R, init[1])
