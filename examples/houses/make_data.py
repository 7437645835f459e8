"""Writes houses.csv: 600 synthetic house sales, a price to predict (regression) and whether the
house sold within 30 days (binary). Run once: python make_data.py"""

import csv

import numpy as np

rng = np.random.default_rng(0)
n = 600
area = rng.uniform(40, 220, n)
rooms = np.clip(np.round(area / 35 + rng.normal(0, 0.8, n)), 1, 8)
age = rng.uniform(0, 80, n)
distance = rng.exponential(8, n)
garden = rng.random(n) < 0.4
price = 50 + 2.5 * area + 10 * rooms - 0.8 * age - 6 * distance + 25 * garden  # thousands
price += rng.normal(0, 25, n)
logit = -0.3 + 1.2 * garden - 0.12 * distance + 0.015 * (area - 110) - 0.01 * (price - 330)
sold_fast = rng.random(n) < 1 / (1 + np.exp(-logit))

with open("houses.csv", "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(
        ["area_m2", "rooms", "age_years", "distance_km", "garden", "price_k", "sold_30d"]
    )
    for row in zip(area, rooms, age, distance, garden, price, sold_fast, strict=True):
        a, r, y, d, g, p, s = row
        writer.writerow([f"{a:.1f}", int(r), f"{y:.1f}", f"{d:.2f}", int(g), f"{p:.1f}", int(s)])
