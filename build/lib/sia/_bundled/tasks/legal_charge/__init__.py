"""Legal charge classification (LawBench 3-3 / CAIL2018): facts in, charge names out."""
