"""The subject directory: slot -> (subject, label), cached per gallery version, refused when unsure."""

import base64

import pytest

from blindgate.device.directory import DirectoryError, SubjectDirectory
from blindgate.device.labels import LabelCipher
from blindgate.shared.errors import BlindgateError


@pytest.fixture
def labels(tmp_path):
    LabelCipher.create_key(tmp_path)
    return LabelCipher.load(tmp_path, "home")


def listing(labels, version, *subjects):
    return {
        "gallery_version": version,
        "subjects": [
            {"subject": s, "label": base64.b64encode(labels.encrypt(name)).decode(), "block": b, "slot": slot}
            for s, name, b, slot in subjects
        ],
    }


class Cloud:
    """A fake subject-list endpoint that counts fetches."""

    def __init__(self, *answers):
        self.answers, self.fetches = list(answers), 0

    def __call__(self):
        self.fetches += 1
        answer = self.answers[min(self.fetches, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_lookup_fetches_once_per_gallery_version(labels):
    cloud = Cloud(listing(labels, 3, ("s1", "Alice", 0, 0), ("s2", "Bob", 1, 5)))
    directory = SubjectDirectory(cloud, labels)
    assert directory.lookup(3, 0, 0) == ("s1", "Alice")
    assert directory.lookup(3, 1, 5) == ("s2", "Bob")
    assert cloud.fetches == 1 and directory.version == 3


def test_a_newer_gallery_refreshes_the_list(labels):
    cloud = Cloud(listing(labels, 1, ("s1", "Alice", 0, 0)), listing(labels, 2, ("s1", "Alice", 0, 0), ("s3", "Carol", 0, 1)))
    directory = SubjectDirectory(cloud, labels)
    directory.refresh()
    assert directory.lookup(2, 0, 1) == ("s3", "Carol") and cloud.fetches == 2


def test_a_gallery_changed_during_the_scan_is_refused(labels):
    directory = SubjectDirectory(Cloud(listing(labels, 4, ("s1", "Alice", 0, 0))), labels)
    with pytest.raises(DirectoryError, match="gallery changed"):
        directory.lookup(3, 0, 0)


def test_an_empty_slot_is_refused(labels):
    directory = SubjectDirectory(Cloud(listing(labels, 1, ("s1", "Alice", 0, 0))), labels)
    with pytest.raises(DirectoryError, match="no subject at block 0 slot 7"):
        directory.lookup(1, 0, 7)


def test_a_label_that_does_not_decrypt_is_shown_as_none(labels, tmp_path):
    answer = listing(labels, 1, ("s1", "Alice", 0, 0))
    answer["subjects"][0]["label"] = base64.b64encode(b"not a sealed label").decode()
    directory = SubjectDirectory(Cloud(answer), labels)
    assert directory.lookup(1, 0, 0) == ("s1", None)


@pytest.mark.parametrize("failure", [ConnectionError("down"), {"gallery_version": "x"}, {"subjects": []}])
def test_an_unavailable_or_malformed_list_is_a_directory_error(labels, failure):
    directory = SubjectDirectory(Cloud(failure), labels)
    with pytest.raises(DirectoryError, match="subject list unavailable"):
        directory.refresh()
    assert issubclass(DirectoryError, BlindgateError) and issubclass(DirectoryError, RuntimeError)
