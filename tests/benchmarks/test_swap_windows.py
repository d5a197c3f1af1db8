"""benchmarks/swap.py's interleaved protocol: which requests count for the swaps and which for steady state."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

from swap import split_by_windows  # noqa: E402


def request(end: float, seconds: float = 0.1, status: str = "200") -> list:
    return [end - seconds, seconds, status, "v"]


def test_a_request_counts_for_a_swap_from_its_post_to_one_second_after_its_answer():
    moments = [[10.0, 12.0]]
    requests = [request(9.99), request(10.0), request(12.5), request(12.99), request(13.0)]
    windows = split_by_windows(requests, moments, counted_from=0.0, after_s=1.0)
    assert windows["swaps_window"]["requests"] == 3  # 10.0, 12.5, 12.99
    assert windows["steady_window"]["requests"] == 2  # 9.99 before it, 13.0 after


def test_failed_requests_and_those_ending_before_the_count_starts_are_left_out():
    requests = [request(1.0), request(5.0, status="ConnectionResetError"), request(6.0)]
    windows = split_by_windows(requests, [[20.0, 21.0]], counted_from=2.0, after_s=1.0)
    assert windows["steady_window"]["requests"] == 1
    assert windows["swaps_window"]["requests"] == 0


def test_p99_is_the_nearest_rank_one_of_each_side_and_each_gap_has_its_own():
    steady_before = [request(1.0 + i / 100, seconds=0.1) for i in range(99)] + [request(2.0, seconds=0.9)]
    during = [request(10.5, seconds=0.3)]
    steady_after = [request(20.0, seconds=0.2)]
    windows = split_by_windows(steady_before + during + steady_after, [[10.0, 11.0]], counted_from=0.0, after_s=1.0)
    assert windows["swaps_window"]["p99_ms"] == 300.0
    # 101 steady requests: the 100th by nearest rank (ceil(0.99 * 101) = 100) is the 0.2-s one
    assert windows["steady_window"]["p99_ms"] == 200.0
    assert windows["steady_gaps_p99_ms"] == [100.0, 200.0]  # the gap before the swap: rank 99 of 100
