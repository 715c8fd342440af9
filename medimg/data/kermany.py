"""The Kermany chest X-ray file-name rule: normal, bacterial or viral pneumonia from folder and file name.

Kermany et al. (Cell 172(5), 2018; Mendeley Data v2, "Labeled Optical Coherence Tomography (OCT)
and Chest X-Ray Images for Classification") file their chest radiographs in ``NORMAL`` and
``PNEUMONIA`` folders and name each pneumonia image after its patient and its pneumonia type:
``person1_bacteria_1.jpeg`` is bacterial, ``person1_virus_6.jpeg`` viral. The rule here is that
documented one:

* a file in a ``NORMAL`` folder (any case) is ``normal``;
* a file in a ``PNEUMONIA`` folder (any case) whose name holds ``_bacteria_`` (any case) is
  ``bacteria``, ``_virus_`` is ``virus``; holding neither (or both) it has no outcome;
* a file in any other folder has no outcome.

The outcomes map onto ``task.class_names`` through ``data.image_folder.kermany_classes``
(default normal -> normal, bacteria -> bacterial, virus -> viral). The patient id in the same
names: :func:`medimg.data.sources.kermany_patient_key`.
"""

from __future__ import annotations

NORMAL_FOLDER = "normal"
PNEUMONIA_FOLDER = "pneumonia"
TOKENS = {"bacteria": "_bacteria_", "virus": "_virus_"}


def kermany_outcome(class_folder: str | None, file_name: str) -> str | None:
    """``"normal"``, ``"bacteria"``, ``"virus"`` or None for one file, by the rule in the module docstring.

    ``class_folder``: the name of the folder holding the file (``NORMAL``, ``PNEUMONIA``);
    ``file_name``: the file's name (a path's last part). None when the rule gives no outcome: a
    PNEUMONIA file whose name holds neither token or both, or a file in another folder.
    """
    folder = (class_folder or "").lower()
    if folder == NORMAL_FOLDER:
        return "normal"
    if folder != PNEUMONIA_FOLDER:
        return None
    name = file_name.lower()
    found = [outcome for outcome, token in TOKENS.items() if token in name]
    return found[0] if len(found) == 1 else None
