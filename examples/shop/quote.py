"""Call the shop from a program outside the mesh: ``python quote.py`` in this folder,
while ``wiremesh run`` runs here."""

import asyncio

import wiremesh


async def main() -> None:
    async with await wiremesh.connect() as mesh:  # the mesh that runs in this folder
        total = await mesh.call("pricing.quote", {"sku": "A-1", "qty": 4})
        print(f"4 x A-1 cost {total}")


if __name__ == "__main__":
    asyncio.run(main())
