"""De-identification: what of a DICOM header may leave the ingest step, and how patients are named.

The approach is allow-listing, not redaction: :func:`safe_metadata` builds a new dict from the
few fields that training, splitting and reporting need, and nothing else, so an identifying
element that :data:`PHI_KEYWORDS` happens to miss (private tags, a new attribute) still cannot
get through. :data:`PHI_KEYWORDS` lists the attributes of the DICOM PS3.15 Annex E Basic
Application Level Confidentiality Profile (names, IDs, dates and times, addresses, physicians,
operators, institution, device identifiers, UIDs, free-text comments); it is for checks ("does
this output contain any of these values?") and for code that scrubs whole data sets.

Patients, studies and series are named by keyed pseudonyms (HMAC-SHA256 with a secret kept out of
the repository): stable across runs and machines for the same secret, so the same patient always
groups together for leakage-free splitting, but not reversible, and not recomputable by someone
who has a list of candidate IDs but not the secret (a plain hash of a 7-digit MRN is broken by
enumerating ten million values).

Burned-in text in the pixels is not handled here: see ``decode_dicom(allow_burned_in=...)``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re

from pydicom.dataset import Dataset

#: Annex E basic-profile attributes (pydicom keywords) that identify or help identify a person.
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        # the patient
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientMotherBirthName",
        "MilitaryRank",
        "BranchOfService",
        "MedicalRecordLocator",
        "PatientAge",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "EthnicGroup",
        "Occupation",
        "AdditionalPatientHistory",
        "PatientComments",
        "PatientInsurancePlanCodeSequence",
        "PatientReligiousPreference",
        "CountryOfResidence",
        "RegionOfResidence",
        "PregnancyStatus",
        "SmokingStatus",
        "MedicalAlerts",
        "Allergies",
        "PatientState",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        "PatientInstitutionResidence",
        "CurrentPatientLocation",
        # dates and times (all of them: a date plus a hospital narrows a person down)
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "ContentDate",
        "OverlayDate",
        "CurveDate",
        "AcquisitionDateTime",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "OverlayTime",
        "CurveTime",
        "InstanceCreationDate",
        "InstanceCreationTime",
        "DateOfLastCalibration",
        "TimeOfLastCalibration",
        "TimezoneOffsetFromUTC",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepStartTime",
        "ScheduledProcedureStepEndDate",
        "ScheduledProcedureStepEndTime",
        # the visit and the order (identifiers and free text)
        "AccessionNumber",
        "StudyID",
        "StudyDescription",
        "SeriesDescription",
        "RequestedProcedureDescription",
        "RequestedProcedureID",
        "PerformedProcedureStepID",
        "PerformedProcedureStepDescription",
        "ScheduledProcedureStepID",
        "AdmissionID",
        "IssuerOfAdmissionID",
        "AdmittingDiagnosesDescription",
        "RequestAttributesSequence",
        "FillerOrderNumberImagingServiceRequest",
        "PlacerOrderNumberImagingServiceRequest",
        "ImageComments",
        "ProtocolName",
        # institution and staff
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "ContentCreatorName",
        "VerifyingObserverName",
        "PersonName",
        "ReviewerName",
        # devices
        "StationName",
        "DeviceSerialNumber",
        "DeviceUID",
        "PlateID",
        "DetectorID",
        "GantryID",
        "CassetteID",
        # UIDs (they embed dates, and link records across systems)
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "MediaStorageSOPInstanceUID",
        "FrameOfReferenceUID",
        "SynchronizationFrameOfReferenceUID",
        "ReferencedSOPInstanceUID",
        "IrradiationEventUID",
        "InstanceCreatorUID",
        "StorageMediaFileSetUID",
        "TransactionUID",
        "ConcatenationUID",
        "DimensionOrganizationUID",
    }
)

SECRET_ENV = "MEDIMG_DEID_SECRET"
MIN_SECRET_BYTES = 16

#: The fixed key ``secret_from_env(demo=True)`` returns. It is public (it is in this file), so
#: pseudonyms made with it protect nothing: demos and tests on public data only, and the caller
#: logs a warning whenever it is used.
DEMO_SECRET: bytes = b"medimg-demo-deid-secret--public--not-for-real-patients"

_KIND = re.compile(r"^[a-z][a-z0-9]{0,15}$")
# Coded-string values (Modality, Body Part Examined, View Position): anything else is free text
# somebody typed into a coded field and is dropped rather than trusted.
_CODE = re.compile(r"^[A-Z0-9 _]{1,16}$")


class MissingSecretError(RuntimeError):
    """No (or too weak a) de-identification secret was configured."""


def pseudonym(value: str, secret: bytes, kind: str) -> str:
    """``f"{kind}-{16 hex}"``: the first 64 bits of HMAC-SHA256(secret, kind NUL value).

    The kind is part of the MAC input, so a patient ID and an identical-looking study ID get
    unrelated pseudonyms. Surrounding whitespace (DICOM pads values with spaces) is stripped
    first, so ``"ABC "`` and ``"ABC"`` are the same person. 64 bits make an accidental collision
    negligible (about 3 in 10^8 for a million distinct values). An empty value raises
    ``ValueError``: pseudonymising "unknown" would merge every unknown patient into one.
    """
    if not _KIND.match(kind):
        raise ValueError(f"kind must be 1-16 lowercase letters/digits, first a letter; got {kind!r}")
    _check_secret(secret)
    text = str(value).strip()
    if not text:
        raise ValueError(f"cannot make a {kind} pseudonym of an empty value")
    digest = hmac.new(secret, kind.encode() + b"\x00" + text.encode("utf-8"), hashlib.sha256)
    return f"{kind}-{digest.hexdigest()[:16]}"


def _check_secret(secret: bytes) -> None:
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"secret must be bytes, got {type(secret).__name__}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")


def secret_from_env(var: str = SECRET_ENV, demo: bool = False) -> bytes:
    """The pseudonymisation key from environment variable ``var`` (UTF-8 bytes of its value).

    Missing or empty: :class:`MissingSecretError` naming the variable, unless ``demo`` is True,
    in which case :data:`DEMO_SECRET` is returned and the caller must log a warning that
    pseudonyms are not protected. Set but shorter than :data:`MIN_SECRET_BYTES`: always
    :class:`MissingSecretError` (a mistyped secret must not fall back to the public demo key).
    A configured secret always wins over ``demo``. The same secret must be used for every
    ingest of a project, or the same patient gets different pseudonyms and group-aware
    splitting stops working.
    """
    raw = os.environ.get(var, "")
    if raw and len(raw.encode("utf-8")) >= MIN_SECRET_BYTES:
        return raw.encode("utf-8")
    if demo and not raw:
        return DEMO_SECRET
    problem = "is not set" if not raw else f"is shorter than {MIN_SECRET_BYTES} bytes"
    raise MissingSecretError(
        f"{var} {problem}: set it to a long random secret (e.g. the output of "
        f"`python -c 'import secrets; print(secrets.token_hex(32))'`), keep it out of git and use "
        f"the same value for every ingest; only demos on public data may run without it (demo=True)"
    )


def safe_metadata(ds: Dataset, secret: bytes) -> dict:
    """The non-identifying header fields downstream code needs, and nothing else.

    Keys always present: ``patient_pseudonym``, ``study_pseudonym``, ``series_pseudonym``
    (keyed pseudonyms of Patient ID, Study and Series Instance UID; None when the element is
    missing or empty), ``modality``, ``photometric`` (str or None), ``rows``, ``columns``,
    ``bits_stored`` (int or None). ``body_part`` and ``view_position`` are added only when the
    file has them as proper coded strings. Every value is a str, int or None, so the dict
    serialises to JSON as is.
    """
    out: dict = identity_pseudonyms(ds, secret)
    del out["sop_pseudonym"]
    out.update(
        {
            "modality": _code(ds, "Modality"),
            "photometric": _code(ds, "PhotometricInterpretation"),
            "rows": _int(ds, "Rows"),
            "columns": _int(ds, "Columns"),
            "bits_stored": _int(ds, "BitsStored"),
        }
    )
    for key, keyword in (("body_part", "BodyPartExamined"), ("view_position", "ViewPosition")):
        value = _code(ds, keyword)
        if value is not None:
            out[key] = value
    return out


def identity_pseudonyms(ds: Dataset, secret: bytes) -> dict[str, str | None]:
    """``patient_pseudonym``, ``study_pseudonym``, ``series_pseudonym`` and ``sop_pseudonym``.

    Keyed pseudonyms of Patient ID and Study, Series and SOP Instance UID; None when the element
    is missing or empty. The grouping and label-lookup keys, and nothing else.
    """
    _check_secret(secret)
    return {
        "patient_pseudonym": _pseudonym_of(ds, "PatientID", secret, "pat"),
        "study_pseudonym": _pseudonym_of(ds, "StudyInstanceUID", secret, "study"),
        "series_pseudonym": _pseudonym_of(ds, "SeriesInstanceUID", secret, "series"),
        "sop_pseudonym": _pseudonym_of(ds, "SOPInstanceUID", secret, "sop"),
    }


def _pseudonym_of(ds: Dataset, keyword: str, secret: bytes, kind: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return pseudonym(value, secret, kind) if value else None


def _code(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip().upper()
    return value if _CODE.match(value) else None


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None
