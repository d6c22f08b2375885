"""The user's errors (animalclf.errors): what an entry point exits with, and the HTTP status an
unusable image answers with."""

import pytest

from animalclf.errors import InvalidImage, UserError


def test_a_user_error_exits_2_and_an_invalid_image_is_one_with_a_status():
    assert UserError.exit_code == 2 and UserError("x").exit_code == 2
    e = InvalidImage("not an image: send a JPEG")
    assert isinstance(e, UserError) and e.exit_code == 2
    assert e.status == 400 and str(e) == "not an image: send a JPEG"
    assert InvalidImage("too big", 413).status == 413 and InvalidImage("odd", status=415).status == 415
    with pytest.raises(UserError, match="too big"):  # entry points catch it as any user error
        raise InvalidImage("too big", 413)
