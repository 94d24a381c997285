"""Question/gold-SQL templates over the ``shop`` database, in five levels of difficulty, and
the seeded generator that instantiates them with slot values sampled from the data.

Levels: 1 filter, 2 join, 3 group and aggregate, 4 order and limit, 5 nested.
A template *instance* is a template with its slot values; its paraphrases share one gold
query, so the splits are made of whole instances (a paraphrase never crosses a split).
"""
from __future__ import annotations

import random
import sqlite3
from dataclasses import dataclass, field
from typing import Callable

Slots = dict[str, object]


def q(value: str) -> str:
    """An SQL string literal (names such as O'Brien carry quotes)."""
    return "'" + value.replace("'", "''") + "'"


class Facts:
    """Values the slot samplers draw from, read once from the database."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._cache: dict[str, list] = {}

    def column(self, sql: str) -> list:
        if sql not in self._cache:
            self._cache[sql] = [r[0] if len(r) == 1 else r for r in self.conn.execute(sql)]
        return self._cache[sql]

    def pick(self, rng: random.Random, sql: str):
        return rng.choice(self.column(sql))


@dataclass(frozen=True)
class Template:
    id: str
    level: int
    phrasings: tuple[str, ...]          # str.format templates over the slots
    sql: str                            # str.format template; literals are pre-quoted slots
    sample: Callable[[random.Random, Facts], Slots]
    # For ordered results: SQL of the ordering key over all candidate rows (no LIMIT) and the
    # slot holding the limit. The instance is kept only if that order has no ties where they
    # would make the expected rows ambiguous.
    order_key: str | None = None
    limit_slot: str | None = None


@dataclass
class Instance:
    template: Template
    number: int                 # per template, in generation order
    slots: Slots
    sql: str
    questions: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{self.template.id}-{self.number}"


CITY = "SELECT DISTINCT city FROM customers ORDER BY city"
COUNTRY = "SELECT DISTINCT country FROM customers ORDER BY country"
CATEGORY = "SELECT DISTINCT category FROM products ORDER BY category"
DEPARTMENT = "SELECT name FROM departments ORDER BY id"
BUYER = "SELECT DISTINCT c.name FROM customers c JOIN orders o ON o.customer_id = c.id ORDER BY c.name"
EMPLOYEE = "SELECT first_name, last_name FROM employees ORDER BY id"
SUPPORT_REP = "SELECT DISTINCT e.first_name, e.last_name FROM employees e JOIN customers c ON c.support_rep_id = e.id ORDER BY e.id"
ORDER_DAY = "SELECT DISTINCT order_date FROM orders ORDER BY order_date"
STATUS = "SELECT DISTINCT status FROM orders ORDER BY status"
YEARS = [2021, 2022, 2023, 2024]


def _employee(rng, facts, sql=EMPLOYEE) -> Slots:
    first, last = facts.pick(rng, sql)
    return {"first": first, "last": last, "first_q": q(first), "last_q": q(last)}


def _with_quoted(**slots) -> Slots:
    """Slots plus an SQL-quoted twin ``<name>_q`` of every string slot."""
    return {**slots, **{f"{k}_q": q(v) for k, v in slots.items() if isinstance(v, str)}}


TEMPLATES: list[Template] = [
    # ---- level 1: filter one table ----------------------------------------------------
    Template("customers_in_city", 1,
             ("List the names of the customers who live in {city}.",
              "Which customers are based in {city}? Give their names."),
             "SELECT name FROM customers WHERE city = {city_q}",
             lambda r, f: _with_quoted(city=f.pick(r, CITY))),
    Template("products_under_price", 1,
             ("What are the names of the {category} products that cost less than {price} dollars?",
              "Name the products in the {category} category priced under {price}."),
             "SELECT name FROM products WHERE category = {category_q} AND price < {price}",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY), price=r.choice([15, 20, 25, 30, 40, 50, 80, 150]))),
    Template("orders_with_status", 1,
             ("How many orders have the status '{status}'?",
              "Count the orders whose status is {status}."),
             "SELECT COUNT(*) FROM orders WHERE status = {status_q}",
             lambda r, f: _with_quoted(status=f.pick(r, STATUS))),
    Template("employees_hired_after", 1,
             ("Give the first and last names of the employees hired after {year}-01-01.",
              "Which employees were hired after January 1, {year}? Show first and last name."),
             "SELECT first_name, last_name FROM employees WHERE hire_date > '{year}-01-01'",
             lambda r, f: {"year": r.randint(2016, 2023)}),
    Template("customers_without_email", 1,
             ("Which customers in {country} have no email address? Give their names.",
              "List the names of customers from {country} whose email is missing."),
             "SELECT name FROM customers WHERE country = {country_q} AND email IS NULL",
             lambda r, f: _with_quoted(country=f.pick(r, COUNTRY))),
    Template("low_stock_products", 1,
             ("List the names and stock of the {category} products with fewer than {stock} units in stock.",),
             "SELECT name, stock FROM products WHERE category = {category_q} AND stock < {stock}",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY), stock=r.choice([5, 10, 20, 30]))),
    # ---- level 2: join ----------------------------------------------------------------
    Template("orders_of_customer", 2,
             ("List the ids and dates of the orders placed by {customer}.",
              "Which orders did {customer} place? Give order id and order date."),
             "SELECT o.id, o.order_date FROM orders o JOIN customers c ON o.customer_id = c.id "
             "WHERE c.name = {customer_q}",
             lambda r, f: _with_quoted(customer=f.pick(r, BUYER))),
    Template("employees_in_department", 2,
             ("Who works in the {department} department? Give first and last names.",
              "List the first and last names of the employees of the {department} department."),
             "SELECT e.first_name, e.last_name FROM employees e JOIN departments d ON e.department_id = d.id "
             "WHERE d.name = {department_q}",
             lambda r, f: _with_quoted(department=f.pick(r, DEPARTMENT))),
    Template("products_ordered_on_day", 2,
             ("Which products were ordered on {day}? List each product name once.",),
             "SELECT DISTINCT p.name FROM orders o JOIN order_items i ON i.order_id = o.id "
             "JOIN products p ON p.id = i.product_id WHERE o.order_date = {day_q}",
             lambda r, f: _with_quoted(day=f.pick(r, ORDER_DAY))),
    Template("customers_of_rep", 2,
             ("Which customers have {first} {last} as their support representative? Give their names.",),
             "SELECT c.name FROM customers c JOIN employees e ON c.support_rep_id = e.id "
             "WHERE e.first_name = {first_q} AND e.last_name = {last_q}",
             lambda r, f: _employee(r, f, SUPPORT_REP)),
    Template("orders_from_city_in_year", 2,
             ("How many orders did customers from {city} place in {year}?",
              "Count the orders placed in {year} by customers living in {city}."),
             "SELECT COUNT(*) FROM orders o JOIN customers c ON o.customer_id = c.id "
             "WHERE c.city = {city_q} AND o.order_date LIKE '{year}-%'",
             lambda r, f: _with_quoted(city=f.pick(r, CITY), year=r.choice(YEARS))),
    # ---- level 3: group and aggregate ---------------------------------------------------
    Template("customers_per_city", 3,
             ("How many customers are there in each city of {country}?",
              "For every city in {country}, give the number of customers."),
             "SELECT city, COUNT(*) FROM customers WHERE country = {country_q} GROUP BY city",
             lambda r, f: _with_quoted(country=f.pick(r, COUNTRY))),
    Template("average_price_in_category", 3,
             ("What is the average price of the products in the {category} category?",),
             "SELECT AVG(price) FROM products WHERE category = {category_q}",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY))),
    Template("total_spent_by_customer", 3,
             ("How much has {customer} spent in total (quantity times unit price over all order items)?",),
             "SELECT SUM(i.quantity * i.unit_price) FROM order_items i JOIN orders o ON i.order_id = o.id "
             "JOIN customers c ON o.customer_id = c.id WHERE c.name = {customer_q}",
             lambda r, f: _with_quoted(customer=f.pick(r, BUYER))),
    Template("orders_per_status_in_year", 3,
             ("For each order status, how many orders were placed in {year}?",),
             "SELECT status, COUNT(*) FROM orders WHERE order_date LIKE '{year}-%' GROUP BY status",
             lambda r, f: {"year": r.choice(YEARS)}),
    Template("departments_with_many_employees", 3,
             ("Which departments have more than {n} employees? Give the department names.",),
             "SELECT d.name FROM departments d JOIN employees e ON e.department_id = d.id "
             "GROUP BY d.id, d.name HAVING COUNT(*) > {n}",
             lambda r, f: {"n": r.randint(4, 11)}),
    Template("average_salary_per_department", 3,
             ("What is the average salary in each department for employees hired before {year}-01-01? "
              "Give department name and average salary.",),
             "SELECT d.name, AVG(e.salary) FROM employees e JOIN departments d ON e.department_id = d.id "
             "WHERE e.hire_date < '{year}-01-01' GROUP BY d.id, d.name",
             lambda r, f: {"year": r.randint(2016, 2024)}),
    # ---- level 4: order and limit -------------------------------------------------------
    Template("most_expensive_in_category", 4,
             ("What are the {k} most expensive products in the {category} category? Give their names.",
              "Name the top {k} {category} products by price, most expensive first."),
             "SELECT name FROM products WHERE category = {category_q} ORDER BY price DESC LIMIT {k}",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY), k=r.randint(2, 4)),
             order_key="SELECT price FROM products WHERE category = {category_q} ORDER BY price DESC",
             limit_slot="k"),
    Template("latest_orders_of_customer", 4,
             ("List the ids and dates of the {k} most recent orders of {customer}, newest first.",),
             "SELECT o.id, o.order_date FROM orders o JOIN customers c ON o.customer_id = c.id "
             "WHERE c.name = {customer_q} ORDER BY o.order_date DESC LIMIT {k}",
             lambda r, f: _with_quoted(customer=f.pick(r, BUYER), k=r.randint(2, 3)),
             order_key="SELECT o.order_date FROM orders o JOIN customers c ON o.customer_id = c.id "
                       "WHERE c.name = {customer_q} ORDER BY o.order_date DESC",
             limit_slot="k"),
    Template("top_customers_in_year", 4,
             ("Which {k} customers placed the most orders in {year}? Give names, most orders first.",
              "Name the top {k} customers by number of orders placed in {year}, most orders first."),
             "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id "
             "WHERE o.order_date LIKE '{year}-%' GROUP BY c.id, c.name ORDER BY COUNT(*) DESC LIMIT {k}",
             lambda r, f: {"k": r.randint(2, 3), "year": r.choice(YEARS)},
             order_key="SELECT COUNT(*) FROM orders WHERE order_date LIKE '{year}-%' "
                       "GROUP BY customer_id ORDER BY COUNT(*) DESC",
             limit_slot="k"),
    Template("best_paid_in_department", 4,
             ("Who is the highest-paid employee of the {department} department? Give first and last name.",),
             "SELECT e.first_name, e.last_name FROM employees e JOIN departments d ON e.department_id = d.id "
             "WHERE d.name = {department_q} ORDER BY e.salary DESC LIMIT 1",
             lambda r, f: _with_quoted(department=f.pick(r, DEPARTMENT)),
             order_key="SELECT e.salary FROM employees e JOIN departments d ON e.department_id = d.id "
                       "WHERE d.name = {department_q} ORDER BY e.salary DESC",
             limit_slot="one"),
    Template("cheapest_first_in_category", 4,
             ("List the names and prices of the {category} products from {supplier}, cheapest first.",),
             "SELECT name, price FROM products WHERE category = {category_q} AND supplier = {supplier_q} "
             "ORDER BY price",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY),
                                       supplier=f.pick(r, "SELECT DISTINCT supplier FROM products "
                                                          "WHERE supplier IS NOT NULL ORDER BY supplier")),
             order_key="SELECT price FROM products WHERE category = {category_q} AND supplier = {supplier_q} "
                       "ORDER BY price"),
    # ---- level 5: nested ----------------------------------------------------------------
    Template("pricier_than_average", 5,
             ("Which {category} products cost more than the average price of all products? Give their names.",),
             "SELECT name FROM products WHERE category = {category_q} AND price > (SELECT AVG(price) FROM products)",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY))),
    Template("customers_without_orders", 5,
             ("Which customers from {country} have never placed an order? Give their names.",),
             "SELECT name FROM customers WHERE country = {country_q} "
             "AND id NOT IN (SELECT customer_id FROM orders)",
             lambda r, f: _with_quoted(country=f.pick(r, COUNTRY))),
    Template("above_department_average", 5,
             ("Which employees of the {department} department earn more than that department's average salary? "
              "Give first and last names.",),
             "SELECT e.first_name, e.last_name FROM employees e JOIN departments d ON e.department_id = d.id "
             "WHERE d.name = {department_q} AND e.salary > (SELECT AVG(e2.salary) FROM employees e2 "
             "WHERE e2.department_id = d.id)",
             lambda r, f: _with_quoted(department=f.pick(r, DEPARTMENT))),
    Template("products_not_sold_in_year", 5,
             ("Which {category} products were not ordered at all in {year}? Give their names.",),
             "SELECT name FROM products WHERE category = {category_q} AND id NOT IN "
             "(SELECT i.product_id FROM order_items i JOIN orders o ON o.id = i.order_id "
             "WHERE o.order_date LIKE '{year}-%')",
             lambda r, f: _with_quoted(category=f.pick(r, CATEGORY), year=r.choice(YEARS))),
    Template("customers_above_average_orders", 5,
             ("Which customers in {city} placed more orders than the average number of orders per customer "
              "who ordered? Give their names.",),
             "SELECT c.name FROM customers c JOIN orders o ON o.customer_id = c.id WHERE c.city = {city_q} "
             "GROUP BY c.id, c.name HAVING COUNT(*) > (SELECT AVG(n) FROM "
             "(SELECT COUNT(*) AS n FROM orders GROUP BY customer_id))",
             lambda r, f: _with_quoted(city=f.pick(r, CITY))),
]


def _informative(rows: list[tuple], max_rows: int) -> bool:
    """A gold result worth asking for: some rows, not all NULL/zero, not a huge list."""
    return 0 < len(rows) <= max_rows and any(v not in (None, 0) for row in rows for v in row)


def _unambiguous_order(conn: sqlite3.Connection, template: Template, slots: Slots) -> bool:
    """No ties among the rows the gold query returns, nor at the LIMIT boundary."""
    keys = [r[0] for r in conn.execute(template.order_key.format(**slots))]
    n = len(keys) if template.limit_slot is None else (1 if template.limit_slot == "one" else int(slots[template.limit_slot]))
    head = keys[:n]
    return len(set(head)) == len(head) and (len(keys) <= n or keys[n - 1] != keys[n])


def generate_instances(conn: sqlite3.Connection, seed: int, per_template: int, paraphrases: int = 1,
                       max_rows: int = 40, attempts: int = 60) -> dict[str, list[Instance]]:
    """Up to ``per_template`` distinct, answerable instances of every template, by template id."""
    facts = Facts(conn)
    out: dict[str, list[Instance]] = {}
    for template in TEMPLATES:
        rng = random.Random(f"{seed}:{template.id}")   # templates do not shift each other's draws
        instances, seen = [], set()
        for _ in range(attempts):
            if len(instances) >= per_template:
                break
            slots = template.sample(rng, facts)
            sql = template.sql.format(**slots)
            if sql in seen:
                continue
            seen.add(sql)
            if not _informative(conn.execute(sql).fetchall(), max_rows):
                continue
            if template.order_key and not _unambiguous_order(conn, template, slots):
                continue
            order = rng.sample(range(len(template.phrasings)), len(template.phrasings))
            questions = [template.phrasings[order[k % len(order)]].format(**slots) for k in range(paraphrases)]
            instances.append(Instance(template, len(instances), slots, sql, questions))
        out[template.id] = instances
    return out


def interleave(by_template: dict[str, list[Instance]], seed: int) -> list[Instance]:
    """All instances, round-robin over templates (in a seeded order per round), so any prefix
    of the list covers the templates and levels evenly."""
    rng = random.Random(f"{seed}:interleave")
    queues = {tid: list(instances) for tid, instances in by_template.items()}
    out = []
    while any(queues.values()):
        round_ids = [tid for tid, queue in queues.items() if queue]
        rng.shuffle(round_ids)
        out.extend(queues[tid].pop(0) for tid in round_ids)
    return out


def _shares(m: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(val, test) counts out of m: at least one each once there are enough to go round."""
    n_test = max(1, round(m * test_fraction)) if m >= 2 else 0
    n_val = max(1, round(m * val_fraction)) if m >= 3 else 0
    return n_val, n_test


def assign_splits(by_template: dict[str, list[Instance]], val_fraction: float, test_fraction: float,
                  split_by: str = "instance", seed: int = 0) -> dict[str, dict[str, list[Instance]]]:
    """split -> template id -> instances. ``instance``: each template's instances shared out
    over the splits (every template in every split); ``template``: whole templates per split,
    stratified by level, so val/test ask for query shapes train never shows."""
    if split_by == "template":
        return _assign_templates(by_template, val_fraction, test_fraction, seed)
    parts: dict[str, dict[str, list[Instance]]] = {"train": {}, "val": {}, "test": {}}
    for tid, instances in by_template.items():
        n_val, n_test = _shares(len(instances), val_fraction, test_fraction)
        parts["test"][tid] = instances[:n_test]
        parts["val"][tid] = instances[n_test:n_test + n_val]
        parts["train"][tid] = instances[n_test + n_val:]
    return parts


def _assign_templates(by_template, val_fraction, test_fraction, seed) -> dict[str, dict[str, list[Instance]]]:
    rng = random.Random(f"{seed}:templates")
    parts: dict[str, dict[str, list[Instance]]] = {"train": {}, "val": {}, "test": {}}
    levels = sorted({t.level for t in TEMPLATES})
    for level in levels:
        ids = [t.id for t in TEMPLATES if t.level == level and by_template.get(t.id)]
        rng.shuffle(ids)
        n_val, n_test = _shares(len(ids), val_fraction, test_fraction)
        for k, tid in enumerate(ids):
            name = "test" if k < n_test else "val" if k < n_test + n_val else "train"
            parts[name][tid] = by_template[tid]
    return parts
