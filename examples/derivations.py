"""The gradients of a strided 2-D convolution, derived from its graph and printed as math.

convc writes the forward convolution (9.7/9.8) as one comprehension and derives the kernel
gradient g (9.11) and the input gradient h (9.13) from it. For h it solves the affine
access ``2·i + m - 1 = j`` per axis: one comprehension per phase of ``j`` modulo the stride,
with the ranges of the eliminated variables kept as constraints (``where``) that lowering
turns into floor/ceil loop bounds. The loop nests and the C follow, as derived
(``algorithm="direct"``; by default a module packs these sums into matrix products).
"""

import convc

g = convc.Graph("strided")
x = g.input("x", (None, 3, 7, 7))
g.output(g.conv(x, channels=4, kernel=3, stride=2, padding=1))

lowered = convc.lower(g, grad=["x", "conv0.weight"], algorithm="direct")
print("forward:")
print("  ", lowered.comprehensions["conv0"][0])
for step in lowered.derivatives("conv0"):
    print(f"\n{step.role} ({step.comps[0].equation}):")
    for comp in step.comps:
        print("  ", comp)

dinput = next(s for s in lowered.derivatives("conv0") if s.role == "dinput")
name = lowered.functions[dinput]
lines = lowered.source.splitlines()
start = next(i for i, line in enumerate(lines) if f" {name}(" in line)
end = next(i for i in range(start, len(lines)) if lines[i] == "}")
print(f"\nthe C of h, {name}:\n")
print("\n".join(lines[start:end + 1]))
