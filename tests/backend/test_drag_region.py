"""Where a drag without a selection may move the picture (edit_runner._drag_region): points spread over
the face move a box around them all; points in a row or a cluster (a smile's corners, both pupils) each
move a box of their own, so that the face between them is not carried along; the model still makes its
change inside the one box."""

from __future__ import annotations

import numpy as np

from alignment import aligned_edit
from backend import edit_runner
from draggan_wire import protocol as P

SIZE = 128


def region(handles: list[tuple[float, float]], targets: list[tuple[float, float]], rigid_ok: bool = True
           ) -> tuple[np.ndarray, np.ndarray, str]:
    mask, allowed, note = edit_runner._drag_region(None, P.EditParams(), handles, targets, SIZE, SIZE, rigid_ok)
    assert mask is not None and allowed is not None
    return mask, allowed, note


def test_a_row_of_points_moves_a_box_around_each_and_leaves_the_face_between_them() -> None:
    corners = [(44.0, 90.0), (84.0, 90.0)]                     # a smile: both mouth corners 4 px up
    raised = [(x, y - 4.0) for x, y in corners]
    mask, allowed, note = region(corners, raised)
    assert "row or a cluster" in note
    assert allowed[88, 64] == 0 and mask[88, 64] == 1          # the mouth's middle stays; the model may use it
    margin = max(aligned_edit.REGION_MIN_MARGIN * SIZE, aligned_edit.POINT_MARGIN_MOVE * 4.0)
    for x, y in corners:
        assert allowed[int(y - 4 - margin) + 1, int(x)] == 1 and allowed[int(y + margin) - 1, int(x)] == 1
        assert allowed[int(y), int(x - margin) + 1] == 1 and allowed[int(y), int(x + margin) - 1] == 1
        assert allowed[int(y), int(x + margin) + 2] == 0
    assert (allowed <= mask).all()                             # inside the model's box


def test_a_longer_move_gets_a_wider_box_of_its_own() -> None:
    _, short, _ = region([(40.0, 60.0), (88.0, 60.0)], [(40.0, 58.0), (88.0, 58.0)])
    _, long, _ = region([(40.0, 60.0), (88.0, 60.0)], [(40.0, 50.0), (88.0, 50.0)])
    assert long.sum() > short.sum() and (short <= long).all()
    assert long[60 + 14, 40] == 1 and short[60 + 14, 40] == 0   # 1.5 x 10 px below the handle


def test_spread_points_and_the_model_s_own_result_keep_the_one_box() -> None:
    spread = [(40.0, 40.0), (88.0, 46.0), (60.0, 96.0)]        # over the face on both axes, not moving as one
    moved = [(42.0, 40.0), (88.0, 43.0), (60.0, 99.0)]
    mask, allowed, note = region(spread, moved)
    assert (mask == allowed).all() and "row or a cluster" not in note
    row = [(44.0, 90.0), (84.0, 90.0)]
    mask, allowed, note = region(row, [(x, y - 4.0) for x, y in row], rigid_ok=False)   # result "model"
    assert (mask == allowed).all() and "row or a cluster" not in note
    box = aligned_edit.default_region(row, [(x, y - 4.0) for x, y in row], SIZE, SIZE)
    assert (mask == box).all()


def test_a_selection_or_the_whole_picture_is_never_cut_into_boxes() -> None:
    selection = np.zeros((SIZE, SIZE), np.float32)
    selection[60:110, 30:100] = 1.0
    row = [(44.0, 90.0), (84.0, 90.0)]
    mask, allowed, note = edit_runner._drag_region(selection, P.EditParams(), row, [(x, y - 4.0) for x, y in row],
                                                   SIZE, SIZE, True)
    assert mask is selection and (allowed == selection).all() and note == ""
    mask, allowed, _ = edit_runner._drag_region(None, P.EditParams(region="whole"), row,
                                                [(x, y - 4.0) for x, y in row], SIZE, SIZE, True)
    assert mask is None and allowed is None
