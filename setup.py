"""Packages of the wheel: ``sia`` and its Hydra plugin, plus the repo's ``conf/``, ``tasks/`` and
``sweeps/`` folders carried inside the package as ``sia/_bundled/`` so a non-editable install
runs too (``sia.paths`` finds either layout). Everything else is in pyproject.toml."""
import os

from setuptools import find_namespace_packages, find_packages, setup

BUNDLED = {"conf": "sia._bundled.conf", "tasks": "sia._bundled.tasks", "sweeps": "sia._bundled.sweeps"}

packages = find_packages(include=["sia", "sia.*"]) + find_namespace_packages(include=["hydra_plugins.*"])
package_dir = {}
for folder, package in BUNDLED.items():
    for root, dirs, _files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        name = package + root[len(folder):].replace(os.sep, ".")
        packages.append(name)
        package_dir[name] = root

setup(packages=packages, package_dir=package_dir,
      package_data={"": ["*.yaml", "*.md", "*.json", "*.txt"]}, include_package_data=True)
