"""The example's business logic: a (fake) order store, and the prompt made of one order and the
customer's question. A real handler would read its own database here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Order:
    order_id: str
    customer: str
    status: str
    items: tuple[tuple[str, int], ...]
    carrier: str | None = None
    shipped_on: str | None = None
    expected_on: str | None = None


ORDERS = {
    order.order_id: order
    for order in (
        Order(
            "A-1001",
            "Ada",
            "shipped",
            (("Espresso grinder", 1), ("Descaling tablets", 2)),
            carrier="DHL",
            shipped_on="2025-11-24",
            expected_on="2025-11-27",
        ),
        Order("A-1002", "Grace", "being packed", (("Milk frother", 1),), expected_on="2025-12-02"),
    )
}


def find_order(order_id: str) -> Order | None:
    return ORDERS.get(order_id)


def prompt_about(order: Order, question: str) -> str:
    """What the model is asked: the order's facts, then the customer's own words."""
    items = ", ".join(f"{count} x {name}" for name, count in order.items)
    facts = [
        f"Order {order.order_id} of {order.customer}: {items}.",
        f"Status: {order.status}.",
    ]
    if order.carrier:
        facts.append(f"Shipped on {order.shipped_on} with {order.carrier}.")
    if order.expected_on:
        facts.append(f"Expected delivery: {order.expected_on}.")
    return (
        "You are the shop's support assistant. Answer the customer's question from these facts "
        "about their order only; say so when they do not tell.\n"
        + "\n".join(facts)
        + f"\n\nThe customer asks: {question}"
    )
