"""A FHIR Patient read into the register's attributes: a `given` entry may be null (its value carried by
an extension in `_given`), which names nobody."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.patient import Patient

from gateway.connectors.fhir import patient_attributes


def _patient(given: list[Any]) -> Patient:
    return Patient.model_validate(
        {
            "resourceType": "Patient",
            "name": [{"use": "official", "family": "Traoré", "given": given}],
            "birthDate": "1990-04-02",
        }
    )


def test_null_given_names_are_left_out_and_none_left_is_no_given_name() -> None:
    assert patient_attributes(_patient(["Awa", "Fanta"]))["given_names"] == "Awa Fanta"
    assert patient_attributes(_patient([None, "Awa"]))["given_names"] == "Awa"
    assert patient_attributes(_patient([None]))["given_names"] is None
    assert patient_attributes(_patient([None]))["family_name"] == "Traoré"
