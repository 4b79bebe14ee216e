"""Announce an order as the shop's order system would, then wait until billing has
charged it: ``python order.py 7 10.0`` in this folder, while ``wiremesh run`` runs here."""

import asyncio
import sys

import wiremesh


async def main(order: int, total: float) -> None:
    async with await wiremesh.connect() as mesh:
        await mesh.emit("orders.created", {"id": order, "total": total})  # on disk, then back
        charged = None
        while charged is None:  # billing handles the order soon after, not during emit
            await asyncio.sleep(0.1)
            charged = await mesh.call("billing.charged", order)
        print(f"order {order} charged {charged}")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), float(sys.argv[2])))
