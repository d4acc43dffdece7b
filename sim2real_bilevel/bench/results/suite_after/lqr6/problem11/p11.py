import sys, numpy as np
from sim2real_bilevel.core.generators import generate, load_text
from sim2real_bilevel.core.experiments import make_run
problem = load_text(generate('lqr', 11).text)
names = problem.theta_names
lo, hi = (np.asarray(b) for b in problem.theta_bounds())
def value(theta):
    return problem.normalized_return(problem.inner_solve(np.asarray(theta), None, method='exact').phi)
witness = np.array([-0.238, 0.369, -0.7, 0.189, -0.6622, -2.388, -0.8565, 0.45, 0.45, 1.819, -0.45, 0.6969])
run = make_run(problem, 'bilevel-exact-real-gradient', 0, iterations=200, evaluate=True)
records = run.run(200)
final = np.array(run.theta)
curve = [r.normalized_return for r in records]
print('reference: best %.4f at it %d, final %.4f' % (max(curve), int(np.argmax(curve)), curve[-1]))
print('theta0   ', np.round(problem.theta0(), 3).tolist(), 'value %.4f' % value(problem.theta0()))
print('final    ', np.round(final, 3).tolist(), 'value %.4f' % value(final))
print('witness  ', witness.tolist(), 'value %.4f' % value(witness))
at = [(names[i], 'upper' if abs(final[i]-hi[i]) < 1e-9 else 'lower') for i in range(len(final)) if min(abs(final[i]-hi[i]), abs(final[i]-lo[i])) < 1e-9]
print('at bounds (final):', at)
atw = [(names[i], 'upper' if abs(witness[i]-hi[i]) < 1e-3 else 'lower') for i in range(len(witness)) if min(abs(witness[i]-hi[i]), abs(witness[i]-lo[i])) < 1e-3]
print('at bounds (witness):', atw)
print('bounds lo', np.round(lo,3).tolist()); print('bounds hi', np.round(hi,3).tolist())
# finite-difference gradient of the normalised return at the final theta (float64), projected
h = 1e-5
g = np.array([(value(np.clip(final + h*e, lo, hi)) - value(np.clip(final - h*e, lo, hi))) /
              (np.clip(final + h*e, lo, hi) - np.clip(final - h*e, lo, hi))[i] for i, e in enumerate(np.eye(len(final)))])
free = [(i) for i in range(len(final)) if lo[i] + 1e-9 < final[i] < hi[i] - 1e-9]
print('FD gradient at final:', np.round(g, 5).tolist())
print('norm of the gradient on free coordinates %.2e; on bound coordinates (outward +):' % np.linalg.norm(g[free]),
      [(names[i], round(float(g[i] if final[i] >= hi[i]-1e-9 else -g[i]), 4)) for i in range(len(final)) if i not in free])
for t in np.linspace(0, 1, 11):
    print('segment final->witness t=%.1f: %.4f' % (t, value((1-t)*final + t*witness)))
for i in range(len(final)):
    if i not in free:
        th = final.copy(); th[i] = witness[i]
        print('final with %s set to witness value %.3f: %.4f' % (names[i], witness[i], value(th)))
