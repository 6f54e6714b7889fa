"""Activations (the detector stage of section 9.3): elementwise nonlinearities."""

from __future__ import annotations

from dataclasses import dataclass

import sympy

from .elementwise import Elementwise


@dataclass(frozen=True, kw_only=True, slots=True)
class Relu(Elementwise):
    kind = "relu"

    def apply(self, v):
        return sympy.Max(v, 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class Sigmoid(Elementwise):
    kind = "sigmoid"

    def apply(self, v):
        return 1 / (1 + sympy.exp(-v))


@dataclass(frozen=True, kw_only=True, slots=True)
class Tanh(Elementwise):
    kind = "tanh"

    def apply(self, v):
        return sympy.tanh(v)
