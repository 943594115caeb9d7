"""Fixed-point solver: values, residuals, stopping, and unrolled / implicit / finite-difference
gradients."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from imixer_jax.hopfield import (
    Anderson,
    Dense,
    HierarchicalNetwork,
    Implicit,
    Layer,
    Picard,
    Unrolled,
    fixed_point,
    lagrangians,
    solver,
)
from tests import random_draws


def _imlp_like_network(key, dtype=jnp.float32, scale=0.8):
    """LN visible (D=3, S=6) -> GELU (T=5) -> GELU (H=4), untied, contracting feedback loop."""
    k = random_draws.split(key, 6)
    d, s, t, h = 3, 6, 5, 4

    def mat(kk, a, b, c=1.0):
        return (c * random_draws.normal(kk, (a, b)) / np.sqrt(a)).astype(dtype)

    layers = (
        Layer(lagrangians.LayerNorm(gamma=1.0, delta=0.1, axis=-2), (d, s)),
        Layer(lagrangians.GELU(), (d, t)),
        Layer(lagrangians.GELU(), (d, h)),
    )
    synapses = (
        Dense(mat(k[0], s, t), mat(k[1], t, s), jnp.full((t,), 0.1, dtype), None),
        Dense(mat(k[2], t, h, scale), mat(k[3], h, t, scale), jnp.full((h,), -0.1, dtype)),
    )
    net = HierarchicalNetwork(layers, synapses)
    x0 = random_draws.normal(k[4], (2, d, s), dtype)
    return net, x0


def _loss(net, x0, **solve):
    fast, _ = net.solve_fast_layers(x0, **solve)
    y = net.reduced_current(x0, fast)
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape) / y.size)


def test_unrolled_fixed_count_matches_python_loop():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(0))
    fast, sol = net.solve_fast_layers(x0, max_steps=3)
    g0 = net.layers[0].lagrangian.activation(x0)
    u = net.synapses[0].forward(g0)
    z = u
    for _ in range(3):  # the official FPA, written out: z <- u + F(z)
        hidden = lagrangians.gelu(net.synapses[1].forward(lagrangians.gelu(z)))
        z = u + net.synapses[1].backward(hidden)
    np.testing.assert_array_equal(fast[0], z)
    assert np.all(np.asarray(sol.steps) == 3)
    chex.assert_shape(sol.residuals, (3, 2))  # per sample by default
    assert bool(jnp.all(jnp.diff(sol.residuals, axis=0) < 0))  # a contraction: steps shrink


def test_batch_wide_tolerance_stop_and_residual_reporting():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(1))
    batch_wide = dict(per_sample=False)  # one residual over the batch: scalar statistics
    for adjoint in (Unrolled(), Implicit()):
        _, sol = net.solve_fast_layers(x0, max_steps=100, tol=1e-5, adjoint=adjoint, **batch_wide)
        steps = int(sol.steps)
        assert 1 < steps < 100
        assert float(sol.residual) <= 1e-5
        assert float(sol.residuals[steps - 2]) > 1e-5  # it did not stop late
        assert bool(jnp.all(jnp.isnan(sol.residuals[steps:])))
    # With a cap below convergence the residual is reported, not hidden.
    _, sol = net.solve_fast_layers(x0, max_steps=2, tol=1e-9, adjoint=Implicit(), **batch_wide)
    assert int(sol.steps) == 2 and float(sol.residual) > 1e-9


@pytest.mark.slow  # covered in the default set by the float32 implicit-vs-unrolled test
def test_implicit_unrolled_and_finite_difference_gradients_agree():
    # Finite differences need float64: in float32 a step h gives errors ~eps/h ~ 1e-3.
    with jax.enable_x64(True):
        net, x0 = _imlp_like_network(jax.random.PRNGKey(2), dtype=jnp.float64)
        # Jitted (each compiled once; eagerly every loop compiles on its own at every call).
        loss_implicit = jax.jit(
            lambda n, x: _loss(n, x, max_steps=300, tol=1e-13, adjoint=Implicit())
        )
        loss_unrolled = lambda n, x: _loss(n, x, max_steps=300, adjoint=Unrolled())
        g_imp = jax.jit(jax.grad(loss_implicit, argnums=(0, 1)))(net, x0)
        g_unr = jax.jit(jax.grad(loss_unrolled, argnums=(0, 1)))(net, x0)
        # Both solve the same fixed point to ~1e-13 (asymptotic contraction rate ~0.8 here).
        chex.assert_trees_all_close(g_imp, g_unr, rtol=1e-9, atol=1e-11)

        # Directional finite difference along a random direction in (params, input).
        leaves, treedef = jax.tree.flatten(jax.tree.map(jnp.asarray, (net, x0)))
        keys = random_draws.split(jax.random.PRNGKey(3), len(leaves))
        direction = jax.tree.unflatten(
            treedef, [random_draws.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
        )
        h = 1e-6
        plus = jax.tree.map(lambda a, d: a + h * d, (net, x0), direction)
        minus = jax.tree.map(lambda a, d: a - h * d, (net, x0), direction)
        fd = (loss_implicit(*plus) - loss_implicit(*minus)) / (2 * h)
        pairs = zip(jax.tree.leaves(g_imp), jax.tree.leaves(direction))
        analytic = sum(jnp.vdot(g, d) for g, d in pairs)
        # Central difference: truncation O(h^2) ~ 1e-12, rounding ~ 1e-16 / h ~ 1e-10.
        np.testing.assert_allclose(analytic, fd, rtol=1e-6)


def test_implicit_gradient_in_float32_matches_unrolled():
    net, x0 = _imlp_like_network(jax.random.PRNGKey(4))
    # Jitted: eagerly, every loop of the solve and of its adjoint compiles on its own.
    g_imp = jax.jit(jax.grad(lambda n: _loss(n, x0, max_steps=300, tol=1e-6, adjoint=Implicit())))(
        net
    )
    g_unr = jax.jit(jax.grad(lambda n: _loss(n, x0, max_steps=200, adjoint=Unrolled())))(net)
    # Asymptotic contraction rate r ~ 0.85: 200 unrolled steps converge to float32 precision;
    # stopping at a relative step of 1e-6 leaves an error ~1e-6 r / (1 - r) ~ 6e-6 relative in
    # the forward and adjoint solves; 5e-5 is that with a safety factor ~10.
    chex.assert_trees_all_close(g_imp, g_unr, rtol=5e-5, atol=5e-5)


def test_generic_fixed_point_and_per_step_params():
    # z = cos(z) has the Dottie number as its fixed point.
    sol = fixed_point(lambda z, p: jnp.cos(z) * p, jnp.zeros(()), 1.0, max_steps=200, tol=1e-7)
    np.testing.assert_allclose(sol.value, 0.7390851, rtol=1e-5)
    scales = jnp.array([1.0, 2.0, 3.0])
    per_step = Unrolled(per_step=scales)
    sol = fixed_point(lambda z, p, s: z * s + p, 1.0, 0.5, max_steps=3, adjoint=per_step)
    np.testing.assert_allclose(sol.value, ((1.0 * 1 + 0.5) * 2 + 0.5) * 3 + 0.5)
    with pytest.raises(ValueError, match="leading axis of max_steps = 4"):
        fixed_point(lambda z, p, s: z * s + p, 1.0, 0.5, max_steps=4, adjoint=per_step)


def test_options_are_values_and_a_wrong_one_is_a_one_line_error():
    # Settings live in the value they belong to (the implicit adjoint's tolerance in Implicit,
    # the memory in Anderson, the schedule in Unrolled): a wrong combination cannot be written.
    for kw, error, match in (
        (dict(adjoint="implicit"), TypeError, "adjoint must be Unrolled"),
        (dict(method="anderson"), TypeError, "method must be Picard"),
        (dict(max_steps=-1), ValueError, "max_steps must be"),
        (dict(tol=-1.0), ValueError, "tol must be"),
        (dict(batch_ndim=2), ValueError, "batch_ndim must be in"),
    ):
        with pytest.raises(error, match=match) as info:
            fixed_point(lambda z, p: z, jnp.ones(3), 0.5, **{"max_steps": 3, **kw})
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="memory"):
        Anderson(memory=0)
    with pytest.raises(ValueError, match="regularisation"):
        Anderson(regularisation=-1.0)


def test_two_layer_network_is_closed_form():
    layers = (Layer(lagrangians.ReLU(), (4,)), Layer(lagrangians.GELU(), (3,)))
    w = random_draws.normal(jax.random.PRNGKey(5), (4, 3))
    net = HierarchicalNetwork(layers, (Dense(w, None, jnp.ones(3), jnp.ones(4)),))
    x0 = random_draws.normal(jax.random.PRNGKey(6), (2, 4))
    fast, sol = net.solve_fast_layers(x0, max_steps=0)
    assert sol is None
    expected = jax.nn.gelu(jax.nn.relu(x0) @ w + 1, approximate=False) @ w.T + 1
    np.testing.assert_allclose(net.reduced_current(x0, fast), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Per-sample convergence, status, acceleration, closures, adjoint options, unrolling.


def _contraction(key, n=6, rate=0.9):
    """z <- tanh(W z + b) with ||W||_2 = rate (a contraction at that rate)."""
    k1, k2 = random_draws.split(key)
    w = random_draws.normal(k1, (n, n))
    return {"w": rate * w / jnp.linalg.norm(w, ord=2), "b": random_draws.normal(k2, (n,))}


def _tanh_map(z, p):
    return jnp.tanh(z @ p["w"].T + p["b"])


def test_each_sample_stops_on_its_own_residual():
    p = _contraction(jax.random.PRNGKey(0))
    # Sample k's map is scaled by c_k: a smaller scale contracts faster and stops earlier.
    scales = jnp.array([0.1, 0.5, 1.0])[:, None]
    z0 = jnp.zeros((3, 6))
    for adjoint in (Unrolled(), Implicit()):
        sol = fixed_point(
            lambda z, q: scales * _tanh_map(z, q),
            z0,
            p,
            max_steps=200,
            tol=1e-6,
            adjoint=adjoint,
            batch_ndim=1,
        )
        chex.assert_shape((sol.steps, sol.residual, sol.status), ((3,),) * 3)
        chex.assert_shape(sol.residuals, (200, 3))
        steps = np.asarray(sol.steps)
        assert steps[0] < steps[1] < steps[2], steps
        assert bool(jnp.all(sol.status == solver.CONVERGED)) and bool(jnp.all(sol.residual <= 1e-6))
        for k in range(3):  # the same as solving sample k alone
            alone = fixed_point(
                lambda z, q, c=scales[k]: c * _tanh_map(z, q),
                z0[k],
                p,
                max_steps=200,
                tol=1e-6,
                adjoint=adjoint,
            )
            assert int(alone.steps) == steps[k]
            # Batched and single matrix products may round differently: a few float32 ulps.
            np.testing.assert_allclose(alone.value, sol.value[k], rtol=1e-6, atol=1e-7)


def test_status_says_converged_max_steps_or_diverged():
    p = _contraction(jax.random.PRNGKey(1))
    z0 = jnp.zeros(6)
    status = lambda **kw: int(fixed_point(_tanh_map, z0, p, **kw).status)  # noqa: E731
    assert status(max_steps=200, tol=1e-6) == solver.CONVERGED
    assert status(max_steps=3, tol=1e-6) == solver.MAX_STEPS
    assert status(max_steps=3) == solver.MAX_STEPS  # tol = 0: a fixed count, never "converged"
    blow_up = fixed_point(lambda z, q: 1e30 * z + q, jnp.ones(2), 1.0, max_steps=5, tol=1e-6)
    assert int(blow_up.status) == solver.DIVERGED
    fixed_point(_tanh_map, z0, p, max_steps=200, tol=1e-6, throw=True)  # converged: no error


def test_throw_raises_one_clean_error_eagerly_and_under_jit(capfd):
    p = _contraction(jax.random.PRNGKey(1))
    z0 = jnp.zeros(6)
    with pytest.raises(solver.NotConvergedError, match="fixed point not reached") as info:
        fixed_point(_tanh_map, z0, p, max_steps=3, tol=1e-6, throw=True)
    assert "\n" not in str(info.value)
    # Under jit the test is a checkify.check: functionalised, it surfaces as one error.
    jitted = checkify.checkify(
        jax.jit(lambda q: fixed_point(_tanh_map, z0, q, max_steps=3, tol=1e-6, throw=True).value)
    )
    err, _ = jitted(p)
    with pytest.raises(checkify.JaxRuntimeError, match="fixed point not reached"):
        err.throw()
    assert "callback failed" not in "".join(capfd.readouterr())


def _linear_map(z, p):
    return z @ p["w"].T + p["b"]


def test_anderson_needs_fewer_steps_and_gives_the_same_fixed_point_and_gradient():
    # Symmetric W with eigenvalues spread over [-0.97, 0.97]: plain iteration needs
    # ~log(1e-6)/log(0.97) ~ 450 steps, Anderson mixing (a Krylov-like method) far fewer.
    p = _contraction(jax.random.PRNGKey(2), n=20, rate=0.97)
    q = jnp.linalg.qr(p["w"])[0]
    p["w"] = 0.97 * (q * jnp.linspace(-1.0, 1.0, 20)) @ q.T
    z0 = jnp.zeros((2, 20))

    def solve(q, method):
        return fixed_point(
            _linear_map,
            z0,
            q,
            max_steps=2000,
            tol=1e-6,
            adjoint=Implicit(),
            method=method,
            batch_ndim=1,
        )

    def solve_and_grad(q, method):
        """The solution and the gradient of sum(sin(z*)) in one compiled program per method."""
        sol = solve(q, method)
        return jnp.sum(jnp.sin(sol.value)), sol

    solve_and_grad = jax.jit(jax.value_and_grad(solve_and_grad, has_aux=True), static_argnums=1)
    ((_, picard), g_picard), ((_, anderson), g_anderson) = (
        solve_and_grad(p, m) for m in (Picard(), Anderson(memory=8))
    )
    assert bool(jnp.all(anderson.status == solver.CONVERGED))
    assert int(anderson.steps.max()) * 3 < int(picard.steps.min()), (anderson.steps, picard.steps)
    exact = jnp.linalg.solve(jnp.eye(20) - p["w"], p["b"])
    # Relative step 1e-6 at rate 0.97 leaves |z - z*| <~ 1e-6 |z| / 0.03 ~ 3e-5 |z|.
    np.testing.assert_allclose(picard.value[0], exact, rtol=1e-3, atol=1e-3 * jnp.abs(exact).max())
    np.testing.assert_allclose(
        anderson.value[0], exact, rtol=1e-3, atol=1e-3 * jnp.abs(exact).max()
    )
    # Same fixed point and adjoint, each to ~3e-5 relative: 2e-3 covers both with margin.
    chex.assert_trees_all_close(g_picard, g_anderson, rtol=2e-3, atol=2e-3)


def test_implicit_adjoint_differentiates_closed_over_arrays():
    p = _contraction(jax.random.PRNGKey(3))

    def loss(b, adjoint):
        # The map closes over b, a traced array: jax.closure_convert hoists it.
        sol = fixed_point(
            lambda z, w: jnp.tanh(z @ w.T + b),
            jnp.zeros(6),
            p["w"],
            max_steps=300,
            tol=1e-7 if isinstance(adjoint, Implicit) else 0.0,
            adjoint=adjoint,
        )
        return jnp.sum(sol.value**2)

    g_imp = jax.grad(loss)(p["b"], Implicit())
    g_unr = jax.grad(loss)(p["b"], Unrolled())
    # Rate 0.9: 300 unrolled steps converge to float32 precision; the implicit solve stops at a
    # relative step 1e-7, i.e. ~1e-6 from z*: gradients agree to ~1e-5.
    np.testing.assert_allclose(g_imp, g_unr, rtol=1e-4, atol=1e-5)


def test_adjoint_solve_has_its_own_tolerance_and_report():
    p = _contraction(jax.random.PRNGKey(4))
    reports = []

    def loss(q, adjoint_tol):
        sol = fixed_point(
            _tanh_map,
            jnp.zeros(6),
            q,
            max_steps=300,
            tol=1e-7,
            adjoint=Implicit(tol=adjoint_tol, report=reports.append),
        )
        return jnp.sum(sol.value)

    g_tight = jax.grad(loss)(p, 1e-7)
    g_loose = jax.grad(loss)(p, 1e-2)
    jax.effects_barrier()
    assert len(reports) == 2
    tight, loose = reports
    assert int(loose["steps"]) < int(tight["steps"])
    assert float(tight["residual"]) <= 1e-7 and int(tight["status"]) == solver.CONVERGED
    assert float(loose["residual"]) <= 1e-2
    # A looser adjoint changes the gradient, by about its tolerance (relative).
    err = max(
        float(jnp.max(jnp.abs(a - b)))
        for a, b in zip(jax.tree.leaves(g_tight), jax.tree.leaves(g_loose))
    )
    assert 1e-6 < err < 1e-1


def _scan_unroll(**kw):
    jaxpr = jax.make_jaxpr(lambda q: fixed_point(_tanh_map, jnp.zeros(6), q, **kw).value)(
        _contraction(jax.random.PRNGKey(5))
    )
    (eqn,) = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "scan"]
    return eqn.params["unroll"]


def test_unrolled_adjoint_unrolls_small_step_counts():
    assert _scan_unroll(max_steps=2) == 2  # fully unrolled by default (<= UNROLL_MAX)
    assert _scan_unroll(max_steps=solver.UNROLL_MAX + 1) == 1
    assert _scan_unroll(max_steps=2, adjoint=Unrolled(unroll=False)) == 1


def test_implicit_gradients_match_optimistix():
    optx = pytest.importorskip("optimistix")
    with jax.enable_x64(True):
        p = jax.tree.map(lambda a: a.astype(jnp.float64), _contraction(jax.random.PRNGKey(6)))
        z0 = jnp.zeros(6, jnp.float64)

        def ours(q):
            sol = fixed_point(_tanh_map, z0, q, max_steps=1000, tol=1e-14, adjoint=Implicit())
            return jnp.sum(jnp.sin(sol.value))

        def oracle(q):
            sol = optx.fixed_point(
                lambda z, a: _tanh_map(z, a),
                optx.FixedPointIteration(rtol=1e-14, atol=1e-14),
                z0,
                q,
                max_steps=1000,
                adjoint=optx.ImplicitAdjoint(),
            )
            return jnp.sum(jnp.sin(sol.value))

        # Both solve to ~1e-14 and their adjoint linear systems exactly or to ~1e-14: agreement
        # to 1e-10 leaves four orders of margin over the float64 solves.
        g_ours, g_oracle = jax.jit(jax.grad(ours))(p), jax.jit(jax.grad(oracle))(p)
        chex.assert_trees_all_close(g_ours, g_oracle, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Anderson per sample on a hidden-hidden chain; the step budget of an iterative graph.


def _chain(key, gain=2.0):
    """Identity (8) -> tanh (16) -> softplus (12), and three samples scaled 0.05, 1 and 20: a
    nearly linear, a typical and a saturated fixed-point problem of the internal layer."""
    k = random_draws.split(key, 3)
    n = (8, 16, 12)
    w1 = random_draws.normal(k[0], (n[0], n[1])) / np.sqrt(n[0])
    w2 = gain * random_draws.normal(k[1], (n[1], n[2])) / np.sqrt(n[1])
    layers = (
        Layer(lagrangians.Identity(), (n[0],)),
        Layer(lagrangians.Tanh(), (n[1],)),
        Layer(lagrangians.Softplus(), (n[2],)),
    )
    synapses = (
        Dense(w1, forward_bias=jnp.full((n[1],), 0.1)),
        Dense(w2, forward_bias=jnp.full((n[2],), -0.2)),
    )
    x0 = random_draws.normal(k[2], (3, n[0])) * jnp.array([0.05, 1.0, 20.0])[:, None]
    return HierarchicalNetwork(layers, synapses), x0


def test_anderson_needs_no_more_steps_than_picard_and_each_sample_is_its_own_problem():
    net, x0 = _chain(jax.random.PRNGKey(100))

    @jax.jit
    def steps(x, method):
        return net.solve_fast_layers(x, max_steps=200, tol=1e-6, method=method)[1]

    picard, anderson = steps(x0, Picard()), steps(x0, Anderson())
    assert bool(jnp.all(picard.status == solver.CONVERGED))
    assert bool(jnp.all(anderson.status == solver.CONVERGED))
    assert np.all(np.asarray(anderson.steps) <= np.asarray(picard.steps)), (
        anderson.steps,
        picard.steps,
    )
    assert int(anderson.steps.sum()) < int(picard.steps.sum())
    # Each sample solved beside other companions (a batch of the same size, so that the matrix
    # products round alike) takes the same steps: no coefficient or test couples samples.
    for k in range(3):
        alone = steps(jnp.broadcast_to(x0[k], x0.shape), Anderson())
        assert np.all(np.asarray(alone.steps) == int(anderson.steps[k]))


def test_an_iterative_graph_without_a_step_budget_is_a_one_line_error():
    net, x0 = _chain(jax.random.PRNGKey(100))
    with pytest.raises(ValueError, match=r"form a loop.*pass max_steps") as info:
        net.solve_fast_layers(x0)
    assert "\n" not in str(info.value)
    fast, solution = net.solve_fast_layers(x0, max_steps=0)  # the feedforward state, on request
    assert np.all(np.asarray(solution.steps) == 0)


def test_per_sample_stopping_is_the_default_and_batch_wide_is_a_choice():
    net, x0 = _chain(jax.random.PRNGKey(100))
    _, each = net.solve_fast_layers(x0, max_steps=200, tol=1e-6)
    _, whole = net.solve_fast_layers(x0, max_steps=200, tol=1e-6, per_sample=False)
    chex.assert_shape((each.steps, whole.steps), ((3,), ()))
    assert bool(jnp.all(each.residual <= 1e-6))
    # One residual over the batch is dominated by the large-norm sample (scale 20): it stops
    # when that one has, whatever the small samples' own residuals.
    assert int(whole.steps) <= int(each.steps.max())
