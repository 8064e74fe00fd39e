"""Event schemas: one frozen, tagged msgspec Struct per input type and per decision type.

Inputs (interfaces §1) and decisions (rulebook R3.6) share one union, ``Event``. Decimal fields
are R1.1 strings held in normal form once an input has been validated; the engine and the fold
turn them into integer grid units (events/numbers.py).

A recorded input holds its fields plus ``seq``; a decision holds ``seq``, ``ts``, ``type``,
``ref`` (the id of the input that caused it) and its own fields (interfaces §5). ``seq`` is 0
on an input that has not been recorded yet.

Schema evolution: new fields get defaults; the bytes of existing events never change
(tests/golden pins them).
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec

from events.numbers import DECIMAL_PATTERN
from events.timestamps import TS_PATTERN

# --- field types (R1.1, R2.1, R3.2); messages from msgspec name the field: `$.amount` --------
Dec = Annotated[str, msgspec.Meta(pattern=DECIMAL_PATTERN)]
Ts = Annotated[str, msgspec.Meta(pattern=TS_PATTERN)]
InputId = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[\x20-\x7e]+\Z")]
# R2.1: account ids; system accounts (R2.2) are the three names starting with "@".
AccountId = Annotated[
    str, msgspec.Meta(pattern=r"^([A-Za-z0-9._:/-]{1,64}|@insurance|@fees|@external)\Z")
]
# R2.1: asset and instrument ids follow the account character rules, without "@".
SymbolId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._:/-]{1,64}\Z")]
Places = Annotated[int, msgspec.Meta(ge=0, le=18)]  # R4.2, R4.3

_config = dict(tag_field="type", frozen=True, kw_only=True, forbid_unknown_fields=True)


# --- inputs (interfaces §1) ---------------------------------------------------------------
class Asset(msgspec.Struct, tag="asset", **_config):
    """R4.1, R4.2: list an asset or change its haircut."""

    id: InputId
    ts: Ts
    asset: SymbolId
    decimals: Places
    price_decimals: Places
    haircut: Dec
    settlement: bool = False
    seq: int = 0


class Instrument(msgspec.Struct, tag="instrument", **_config):
    """R4.3: list a linear perpetual or change its margin parameters."""

    id: InputId
    ts: Ts
    instrument: SymbolId
    underlying: SymbolId
    qty_decimals: Places
    initial_margin: Dec
    maintenance_margin: Dec
    liquidation_fee: Dec
    seq: int = 0


class Price(msgspec.Struct, tag="price", **_config):
    """R5.1: set the mark price of a non-settlement asset."""

    id: InputId
    ts: Ts
    asset: SymbolId
    price: Dec
    seq: int = 0


class Deposit(msgspec.Struct, tag="deposit", **_config):
    """R7.1"""

    id: InputId
    ts: Ts
    account: AccountId
    asset: SymbolId
    amount: Dec
    seq: int = 0


class Withdrawal(msgspec.Struct, tag="withdrawal", **_config):
    """R7.2"""

    id: InputId
    ts: Ts
    account: AccountId
    asset: SymbolId
    amount: Dec
    seq: int = 0


class Transfer(msgspec.Struct, tag="transfer", **_config):
    """R7.3"""

    id: InputId
    ts: Ts
    from_: AccountId = msgspec.field(name="from")
    to: AccountId
    asset: SymbolId
    amount: Dec
    seq: int = 0


class Trade(msgspec.Struct, tag="trade", **_config):
    """R8"""

    id: InputId
    ts: Ts
    instrument: SymbolId
    buyer: AccountId
    seller: AccountId
    qty: Dec
    price: Dec
    buyer_fee: Dec
    seller_fee: Dec
    seq: int = 0


class Funding(msgspec.Struct, tag="funding", **_config):
    """R9"""

    id: InputId
    ts: Ts
    instrument: SymbolId
    rate: Dec
    seq: int = 0


Input = Union[Asset, Instrument, Price, Deposit, Withdrawal, Transfer, Trade, Funding]
INPUT_TYPES: tuple[type, ...] = Input.__args__  # type: ignore[attr-defined]


# --- decisions (R3.6) ---------------------------------------------------------------------
class Rejected(msgspec.Struct, tag="rejected", **_config):
    """R3.5: a well-formed input the rules do not allow. ``figures`` hold what the failed check
    compared (for example the balance and the amount, or equity and IM after the input)."""

    seq: int
    ts: Ts
    ref: str
    reason: str
    account: str
    rule: str
    figures: dict[str, str] = {}


class Liquidation(msgspec.Struct, tag="liquidation", **_config):
    """R10.3 (a solvent partial close, ``rule`` "R10.3") or R10.5 (a bankrupt account's position
    moved whole to ``@insurance``, no penalty, ``rule`` "R10.5"). The close moves ``qty`` units
    toward zero at ``price`` (the mark) to ``@insurance`` and moves ``penalty`` from the
    account's cash to ``@insurance``."""

    seq: int
    ts: Ts
    ref: str
    rule: str
    account: str
    instrument: str
    price: str
    qty: str
    k: int
    position_before: str
    position_after: str
    penalty: str
    penalty_uncapped: str
    equity_before: str
    initial_margin_before: str
    maintenance_margin_before: str
    equity_after: str
    initial_margin_after: str
    maintenance_margin_after: str


class Seizure(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """R10.4: a collateral balance moved to ``@insurance``, paid for at ``value``."""

    asset: str
    amount: str
    price: str
    value: str


class Bankruptcy(msgspec.Struct, tag="bankruptcy", **_config):
    """R10.4, R10.7: deficit D, cover C from the insurance fund F, uncovered remainder R, and
    the collateral seized. ``residual`` is what ``@insurance`` pays the account when R > 0 and
    the account holds no position (R10.6, first point); otherwise "0"."""

    seq: int
    ts: Ts
    ref: str
    account: str
    equity: str
    maintenance_margin: str
    deficit: str
    insurance_fund: str
    cover: str
    remainder: str
    residual: str
    seized: list[Seizure] = []


class Deleverage(msgspec.Struct, tag="deleverage", **_config):
    """R10.6: one step of auto-deleveraging. ``qty`` units of the bankrupt ``account``'s position
    close at ``price`` against ``counterparty`` (or move to ``@insurance`` as the last step), and
    the counterparty pays ``paid`` of the position's share ``share`` of R to the account.
    ``rank`` is the counterparty's place in the R10.6 ranking (0 for ``@insurance``); its
    ``counterparty_equity`` and ``counterparty_notional`` (leverage = notional / equity) are
    those taken when R10.6 started for this account."""

    seq: int
    ts: Ts
    ref: str
    account: str
    counterparty: str
    instrument: str
    price: str
    qty: str
    position_before: str
    counterparty_position_before: str
    share: str
    paid: str
    rank: int
    counterparty_equity: str
    counterparty_notional: str


class Payment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """R9.2: one holder's funding; ``amount`` is signed (negative: paid, positive: received)."""

    account: str
    position: str
    amount: str


class FundingSettled(msgspec.Struct, tag="funding_settled", **_config):
    """R9: every payment of a funding input and the dust (paid − received) to ``@insurance``."""

    seq: int
    ts: Ts
    ref: str
    instrument: str
    rate: str
    price: str
    paid: str
    received: str
    dust: str
    payments: list[Payment] = []


Decision = Union[Rejected, Liquidation, Bankruptcy, Deleverage, FundingSettled]
DECISION_TYPES: tuple[type, ...] = Decision.__args__  # type: ignore[attr-defined]

Event = Union[
    Asset,
    Instrument,
    Price,
    Deposit,
    Withdrawal,
    Transfer,
    Trade,
    Funding,
    Rejected,
    Liquidation,
    Bankruptcy,
    Deleverage,
    FundingSettled,
]

INPUT_TAGS = frozenset(cls.__struct_config__.tag for cls in INPUT_TYPES)
DECISION_TAGS = frozenset(cls.__struct_config__.tag for cls in DECISION_TYPES)
