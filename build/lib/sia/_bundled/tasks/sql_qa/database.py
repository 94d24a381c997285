"""A seeded generator of the synthetic ``shop`` database: six related tables with skewed,
realistic distributions and NULLs where real data has gaps.

The same seed gives the same rows on every machine (one ``random.Random``, values rounded
before they are stored), so the questions and gold results derived from it are stable.
"""
from __future__ import annotations

import datetime as dt
import os
import random
import sqlite3
from pathlib import Path

DB_ID = "shop"

SCHEMA = """
CREATE TABLE departments (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    budget REAL
);
CREATE TABLE employees (
    id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    department_id INTEGER NOT NULL REFERENCES departments(id),
    manager_id INTEGER REFERENCES employees(id),
    title TEXT NOT NULL,
    hire_date TEXT NOT NULL,
    salary REAL NOT NULL,
    email TEXT
);
CREATE TABLE customers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    email TEXT,
    phone TEXT,
    city TEXT NOT NULL,
    country TEXT NOT NULL,
    signup_date TEXT NOT NULL,
    support_rep_id INTEGER REFERENCES employees(id)
);
CREATE TABLE products (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    category TEXT NOT NULL,
    price REAL NOT NULL,
    stock INTEGER NOT NULL,
    supplier TEXT
);
CREATE TABLE orders (
    id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(id),
    employee_id INTEGER REFERENCES employees(id),
    order_date TEXT NOT NULL,
    status TEXT NOT NULL,
    shipped_date TEXT
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(id),
    product_id INTEGER NOT NULL REFERENCES products(id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,
    PRIMARY KEY (order_id, product_id)
);
"""

FIRST_NAMES = [
    "Ana", "Ben", "Chloe", "Daniel", "Elena", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko",
    "Liam", "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Samir", "Tara", "Uma", "Victor",
    "Wen", "Xavier", "Yara", "Zoe", "Amir", "Bianca", "Carlos", "Dana", "Emil", "Fatima", "Greta",
    "Hassan", "Ivy", "Jack", "Lena", "Marco", "Nina", "Oscar",
]
LAST_NAMES = [
    "Smith", "Garcia", "Muller", "Rossi", "Kowalski", "Nguyen", "Silva", "Novak", "Jensen", "Tanaka",
    "Dubois", "O'Brien", "Petrov", "Haddad", "Larsen", "Moreau", "Costa", "Fischer", "Ibrahim",
    "Kim", "Lopez", "Martin", "Okafor", "Patel", "Reyes", "Schmidt", "Torres", "Weber", "Young",
    "Zhang", "D'Angelo", "Berg",
]
# (city, country, weight): customers concentrate in a few large cities.
CITIES = [
    ("London", "United Kingdom", 14), ("Manchester", "United Kingdom", 5), ("Paris", "France", 12),
    ("Lyon", "France", 4), ("Berlin", "Germany", 11), ("Munich", "Germany", 6), ("Madrid", "Spain", 8),
    ("Valencia", "Spain", 3), ("Rome", "Italy", 6), ("Milan", "Italy", 5), ("Lisbon", "Portugal", 4),
    ("Porto", "Portugal", 2), ("Warsaw", "Poland", 4), ("Amsterdam", "Netherlands", 5),
    ("Oslo", "Norway", 2), ("Dublin", "Ireland", 3),
]
DEPARTMENTS = [  # (name, city, budget or None, share of staff)
    ("Sales", "London", 1_200_000.0, 12), ("Support", "Dublin", 650_000.0, 10),
    ("Engineering", "Berlin", 2_100_000.0, 9), ("Marketing", "Paris", 800_000.0, 5),
    ("Finance", "London", None, 4), ("Logistics", "Warsaw", 540_000.0, 6),
]
BASE_SALARY = {"Sales": 52_000, "Support": 41_000, "Engineering": 78_000, "Marketing": 55_000,
               "Finance": 66_000, "Logistics": 44_000}
TITLES = {"Sales": "Account Manager", "Support": "Support Agent", "Engineering": "Software Engineer",
          "Marketing": "Marketing Specialist", "Finance": "Accountant", "Logistics": "Logistics Coordinator"}
CATEGORIES = {  # category -> (median price, product nouns)
    "Electronics": (120.0, ["Headphones", "Speaker", "Monitor", "Keyboard", "Webcam", "Charger", "Router", "Tablet"]),
    "Books": (18.0, ["Cookbook", "Novel", "Atlas", "Biography", "Dictionary", "Comic", "Guide"]),
    "Kitchen": (35.0, ["Kettle", "Blender", "Pan", "Knife Set", "Toaster", "Teapot", "Grater"]),
    "Garden": (42.0, ["Hose", "Shovel", "Planter", "Rake", "Lantern", "Bench"]),
    "Toys": (25.0, ["Puzzle", "Robot", "Kite", "Board Game", "Doll", "Yo-yo"]),
    "Sports": (60.0, ["Tennis Racket", "Yoga Mat", "Football", "Helmet", "Dumbbell", "Jump Rope"]),
    "Office": (15.0, ["Stapler", "Notebook", "Desk Lamp", "Pen Set", "Binder", "Whiteboard"]),
    "Beauty": (22.0, ["Shampoo", "Face Cream", "Perfume", "Hair Dryer", "Lip Balm"]),
}
ADJECTIVES = ["Classic", "Deluxe", "Compact", "Eco", "Pro", "Mini", "Smart", "Vintage", "Ultra", "Basic"]
SUPPLIERS = ["Acme Trading", "Nordic Goods", "Blue Harbor", "Sunrise Imports", "Atlas Supply"]
STATUSES = [("delivered", 70), ("shipped", 10), ("pending", 8), ("cancelled", 7), ("returned", 5)]

FIRST_ORDER_DAY = dt.date(2021, 1, 1)
LAST_ORDER_DAY = dt.date(2024, 12, 31)


def _day(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randrange((end - start).days + 1))


def _weighted(rng: random.Random, pairs):
    values, weights = zip(*pairs)
    return rng.choices(values, weights=weights)[0]


def generate_rows(seed: int) -> dict[str, list[tuple]]:
    """All rows of the database, table by table, in insertion order."""
    rng = random.Random(seed)
    departments = [(i + 1, name, city, budget) for i, (name, city, budget, _) in enumerate(DEPARTMENTS)]

    # Employees: each department has a head (no manager: a NULL) and staff reporting to the head.
    people = rng.sample([(f, l) for f in FIRST_NAMES for l in LAST_NAMES], 46 + 260)
    employees, dept_staff = [], {}
    for dept_id, (dept, _, _, share) in enumerate(DEPARTMENTS, start=1):
        for k in range(share + 1):
            emp_id = len(employees) + 1
            first, last = people.pop()
            head = dept_staff.get(dept, [None])[0]
            title = f"Head of {dept}" if k == 0 else TITLES[dept]
            hired = _day(rng, dt.date(2012, 1, 1), dt.date(2023, 12, 31))
            salary = round(BASE_SALARY[dept] * rng.lognormvariate(0, 0.18) * (1.6 if k == 0 else 1.0), -2)
            email = None if rng.random() < 0.1 else f"{first}.{last}@shop.example".lower().replace("'", "")
            employees.append((emp_id, first, last, dept_id, head, title, hired.isoformat(), salary, email))
            dept_staff.setdefault(dept, []).append(emp_id)

    customers = []
    for cust_id in range(1, 241):
        first, last = people.pop()
        city, country = _weighted(rng, [((c, k), w) for c, k, w in CITIES])
        email = None if rng.random() < 0.15 else f"{first[0]}{last}{cust_id}@mail.example".lower().replace("'", "")
        phone = None if rng.random() < 0.25 else f"+{rng.randint(30, 49)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        signup = _day(rng, dt.date(2019, 1, 1), dt.date(2024, 6, 30))
        rep = None if rng.random() < 0.2 else rng.choice(dept_staff["Support"])
        customers.append((cust_id, f"{first} {last}", email, phone, city, country, signup.isoformat(), rep))

    products = []
    for category, (median, nouns) in CATEGORIES.items():
        names = rng.sample([f"{a} {n}" for a in ADJECTIVES for n in nouns], 8)
        for name in names:
            price = round(median * rng.lognormvariate(0, 0.55), 2)
            stock = 0 if rng.random() < 0.08 else int(rng.paretovariate(1.2) * 20)
            supplier = None if rng.random() < 0.2 else rng.choice(SUPPLIERS)
            products.append((len(products) + 1, name, category, price, min(stock, 900), supplier))

    # Orders: a heavy-tailed number per customer; about one in ten customers never ordered.
    orders, order_items = [], []
    sales = dept_staff["Sales"]
    for cust in customers:
        n_orders = 0 if rng.random() < 0.1 else min(int(rng.paretovariate(1.6)) + rng.randint(0, 3), 20)
        signup = dt.date.fromisoformat(cust[6])
        for _ in range(n_orders):
            order_id = len(orders) + 1
            day = _day(rng, max(signup, FIRST_ORDER_DAY), LAST_ORDER_DAY)
            status = _weighted(rng, STATUSES)
            shipped = None if status in ("pending", "cancelled") else (day + dt.timedelta(days=rng.randint(1, 7))).isoformat()
            handler = None if rng.random() < 0.15 else rng.choice(sales)
            orders.append((order_id, cust[0], handler, day.isoformat(), status, shipped))
            for product in rng.sample(products, rng.choice([1, 1, 1, 2, 2, 3, 4])):
                quantity = rng.choice([1, 1, 1, 1, 2, 2, 3, 5])
                discount = 0.9 if rng.random() < 0.15 else 1.0
                order_items.append((order_id, product[0], quantity, round(product[3] * discount, 2)))
    orders.sort(key=lambda o: o[0])
    return {"departments": departments, "employees": employees, "customers": customers,
            "products": products, "orders": orders, "order_items": order_items}


def build_database(path: Path, seed: int) -> Path:
    """Write the database for ``seed`` to ``path`` (atomically, then read-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA foreign_keys = ON")   # inserts fail if a reference does not resolve
        conn.executescript(SCHEMA)
        for table, rows in generate_rows(seed).items():
            marks = ", ".join("?" * len(rows[0]))
            conn.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        conn.commit()
    finally:
        conn.close()
    if path.exists():
        path.chmod(0o644)
    os.replace(tmp, path)
    path.chmod(0o444)
    return path
