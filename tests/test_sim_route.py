"""The simulated unit's drive: road speeds along city streets through its whole duty cycle."""

from __future__ import annotations

from firmware_sim._route import Drive, distance_m


def test_route_moves_at_road_speeds_and_cycles_status() -> None:
    """The GPS track never exceeds 25 m/s between fixes and the unit reaches the scene and a hospital."""
    drive = Drive.start(11)
    statuses, last = set(), drive.position
    for _ in range(4000):
        status = drive.step(1.0)
        statuses.add(status)
        assert distance_m(last, drive.position) <= 25.0
        last = drive.position
    assert {"en_route", "on_scene", "transporting", "at_destination"} <= {str(s) for s in statuses if s}
