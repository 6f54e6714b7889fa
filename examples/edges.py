"""Edge detection as in figure 9.6: each pixel minus its neighbour on the left.

The two-element kernel [-1, 1] is run as a cross-correlation along the width of a 280x320
grayscale image by a compiled convc module (the kernel is a constant baked into the C),
giving a 280x319 image of the vertical edges. The script prints the chapter's operation
counts beside convc's own (explain() and conv_matrix) and saves the edge image as
edges.png (matplotlib) or edges.pgm in the current directory.
"""

import re
from pathlib import Path

import numpy as np

import convc

H, W = 280, 320


def grayscale_image() -> tuple[np.ndarray, str]:
    """scipy's raccoon face if it is on this machine (no download), else a drawn scene."""
    try:
        import pooch
        from scipy import datasets

        if (Path(pooch.os_cache("scipy-data")) / "face.dat").exists():
            face = datasets.face(gray=True).astype(np.float64)
            rows = np.linspace(0, face.shape[0] - 1, H).astype(int)
            cols = np.linspace(0, face.shape[1] - 1, W).astype(int)
            return face[np.ix_(rows, cols)] / 255.0, "scipy.datasets.face, resampled"
    except ImportError:
        pass
    y, x = np.mgrid[0:H, 0:W]
    img = 0.2 + 0.5 * ((x - 100) ** 2 + (y - 140) ** 2 < 60**2)       # a disc
    img += 0.3 * ((x > 190) & (x < 290) & (y > 40) & (y < 240))         # a rectangle
    img += 0.1 * np.sin(x / 9.0) * (y > 250)                            # a band of ripples
    return img, "a generated scene (disc, rectangle, ripples)"


def save(image: np.ndarray) -> Path:
    scaled = np.abs(image) / max(np.abs(image).max(), 1e-12)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        plt.imsave("edges.png", scaled, cmap="gray")
        return Path("edges.png").resolve()
    except ImportError:
        path = Path("edges.pgm")
        pixels = (255 * scaled).round().astype(np.uint8)
        path.write_bytes(f"P5 {image.shape[1]} {image.shape[0]} 255\n".encode() + pixels.tobytes())
        return path.resolve()


image, where = grayscale_image()
g = convc.Graph("edges")
x = g.input("x", (None, 1, H, W))
kernel = g.constant("kernel", np.array([[[[-1.0, 1.0]]]]))  # (out, in, 1, 2)
g.output(g.conv(x, channels=1, kernel=(1, 2), weight=kernel, bias=False, name="edges"))
net = convc.compile(g, "float64")
edges = net(x=image[None, None])[0, 0]
assert np.allclose(edges, image[:, 1:] - image[:, :-1])

print(f"input:  {where}, {H}x{W}")
print(f"output: {edges.shape[0]}x{edges.shape[1]} (edges[i, j] = image[i, j+1] - image[i, j])")
print(f"generated C: {net.source_path}")
print(f"library:     {net.library_path}")

rows, cols = edges.size, image.size
print("\nfigure 9.6's counts, and convc's:")
print(f"  convolution, chapter (2 mul + 1 add per output): 319*280*3 = {319 * 280 * 3:,}")
flops = re.search(r"FLOPS\s+fwd: (\d+) per example", net.explain())
print(f"  convolution, convc.explain(): {int(flops.group(1)):,} flops "
      f"(2 taps x (1 mul + 1 add), the first add being to the zero accumulator)")
print(f"  dense matrix: 320*280*319*280 = {cols * rows:,} entries; "
      f"dense product {2 * cols * rows:,} flops")

# conv_matrix on a strip of 4 rows: the matrix is block diagonal, one Toeplitz block per row
strip = 4
m = convc.conv_matrix(np.array([[[[-1.0, 1.0]]]]), (1, strip, W))
assert np.allclose(m @ image[:strip].ravel(), edges[:strip].ravel())
nonzeros = np.count_nonzero(m) * (H // strip)
print(f"  conv_matrix of a {strip}x{W} strip: {m.shape[0]}x{m.shape[1]}, "
      f"{np.count_nonzero(m):,} nonzeros; for the whole image {nonzeros:,} nonzeros "
      f"(chapter: 2*319*280 = {2 * 319 * 280:,})")
print(f"  sparse product: {nonzeros:,} mul + {nonzeros - rows:,} add = "
      f"{2 * nonzeros - rows:,} flops, the convolution's count")
print(f"  dense / convolution: {cols * rows / 2:,.0f}x the storage (2 weights), "
      f"{2 * cols * rows / (319 * 280 * 3):,.0f}x the flops")
print(f"\nedge image saved to {save(edges)}")
