"""Config checks shared by the quantizers' ``validate`` (messages name the class and value)."""

from compressjax.quant.granularity import Granularity

KINDS = ("weight", "activation")


def check_kind(owner: object, kind: str) -> None:
  """Raises ValueError unless ``kind`` is ``"weight"`` or ``"activation"``."""
  if kind not in KINDS:
    raise ValueError(f"{type(owner).__name__}: kind={kind!r} is not allowed; use one of {KINDS}")


def check_granularity(owner: object, granularity: object, allowed: tuple[str, ...]) -> None:
  """Raises TypeError/ValueError unless ``granularity`` is a Granularity of an allowed kind."""
  name = type(owner).__name__
  if not isinstance(granularity, Granularity):
    raise TypeError(f"{name}: granularity={granularity!r} must be a Granularity")
  if granularity.kind not in allowed:
    raise ValueError(
        f"{name}: granularity {granularity.kind!r} is not allowed here; use one of {allowed}"
    )


def resolve_signed(signed: bool | None, kind: str) -> bool:
  """An explicit ``signed``, else signed weights and unsigned (post-ReLU) activations."""
  return kind == "weight" if signed is None else signed
