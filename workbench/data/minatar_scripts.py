"""Scripted, observation-dependent behaviour policies for the five MinAtar games.

Each rule takes a ``minatar.Environment`` and returns an index into MinAtar's full action set
``['n', 'l', 'u', 'r', 'd', 'f']`` (0..5) that is always in that game's ``minimal_action_set()``.
The rules read the game object's internal state (``env.env``) and use no randomness, so a rule
played epsilon-greedily is reproducible given the env's and the epsilon draw's seeds.

* asterix: picks the move whose cell (and a sticky repeat's) no enemy, seen or spawning, reaches soon; pulls to gold.
* breakout: replays the ball to the paddle row; moves to the reachable catch that breaks a brick soonest after.
* freeway: steps up unless a car crosses the next lane in the 3 frames the chicken must stay; else waits or steps down.
* seaquest: dodges enemies/bullets, fires at enemies ahead, faces closing ones, fetches divers, surfaces on low oxygen.
* space_invaders: dodges falling bullets; fires if the replayed alien march meets the shot, else moves to where it does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["RULES", "asterix_rule", "breakout_rule", "freeway_rule", "seaquest_rule", "space_invaders_rule"]

# MinAtar's full action set: n, l, u, r, d, f.
NOOP, LEFT, UP, RIGHT, DOWN, FIRE = range(6)
_MOVES: dict[int, tuple[int, int]] = {NOOP: (0, 0), LEFT: (-1, 0), UP: (0, -1), RIGHT: (1, 0), DOWN: (0, 1)}


def _toward(src: int, dst: int) -> int:
    """LEFT, RIGHT or NOOP to move a horizontal position from ``src`` toward ``dst``."""
    return LEFT if dst < src else RIGHT if dst > src else NOOP


# --------------------------------------------------------------------------------------- breakout
def _breakout_flight(x: int, y: int, d: int, strike: bool, bricks: np.ndarray) -> tuple[int, int, int, int]:
    """Replays ``breakout.Env.act``'s ball update (walls, ceiling, bricks, the strike flag; ``bricks``
    is updated in place) until the ball reaches the paddle row. Returns the frames that takes, the
    frame of the first brick hit (999: none), the ball's column in row 8 and the column it moves to."""
    first_hit = 999
    for t in range(1, 200):
        nx, ny = x + (1 if d in (1, 2) else -1), y + (1 if d in (2, 3) else -1)
        if nx < 0 or nx > 9:
            nx = min(max(nx, 0), 9)
            d = [1, 0, 3, 2][d]
        toggle = False
        if ny < 0:
            ny = 0
            d = [3, 2, 1, 0][d]
        elif bricks[ny, nx] == 1:
            toggle = True
            if not strike:
                strike, bricks[ny, nx], ny, d = True, 0, y, [3, 2, 1, 0][d]
                first_hit = min(first_hit, t)
        elif ny == 9:
            return t, first_hit, x, nx
        strike = strike and toggle
        x, y = nx, ny
    return 200, first_hit, x, x


def breakout_rule(env: Any) -> int:
    g = env.env
    bricks = np.array(g.brick_map, copy=True)
    frames, _, above, landing = _breakout_flight(g.ball_x, g.ball_y, g.ball_dir, g.strike, bricks)
    if not bricks.any():
        bricks[1:4, :] = 1
    # The paddle catches the ball under its column in row 8 (the ball keeps its horizontal heading;
    # checked first) or under the column it moves to (the heading flips); either way the ball goes
    # on from (landing, 8). Of the reachable catches, prefer one with frames to spare for a sticky
    # action (now and at the next catch), then the one after which a brick breaks soonest.
    right = landing > above or (landing == above == 0)  # heading in the landing frame, after a wall
    catches = {landing: 0 if right else 1, above: 1 if right else 0}
    reachable = [c for c in catches if abs(c - g.pos) <= frames] or [above]

    def badness(c: int) -> tuple[bool, bool, int, int]:
        frames2, hit, above2, landing2 = _breakout_flight(landing, 8, catches[c], False, bricks.copy())
        tight_next = min(abs(above2 - c), abs(landing2 - c)) > frames2 - 2
        return abs(c - g.pos) > frames - 2, tight_next, hit, abs(c - g.pos)

    target = min(reachable, key=badness)
    return _toward(g.pos, target)


# ---------------------------------------------------------------------------------------- freeway
def _car_hits(car: list[int], steps: int) -> bool:
    """Whether ``car`` is in the chicken's column (4) during its next ``steps`` updates."""
    x, _, timer, speed = car
    for _ in range(steps):
        if x == 4:
            return True
        if timer == 0:
            timer, x = abs(speed), (x + (1 if speed > 0 else -1)) % 10
            if x == 4:
                return True
        else:
            timer -= 1
    return False


def freeway_rule(env: Any) -> int:
    g = env.env
    if g.move_timer > 0:  # the chicken cannot move this frame; NOOP keeps a sticky repeat harmless
        return NOOP
    lane_car = {car[1]: car for car in g.cars}

    def safe(lane: int, steps: int) -> bool:
        return lane not in lane_car or not _car_hits(lane_car[lane], steps)

    if safe(g.pos - 1, 3):  # a move locks the chicken in the new lane for 3 frames
        return UP
    if safe(g.pos, 1):
        return NOOP
    return DOWN if safe(g.pos + 1, 3) else NOOP


# ---------------------------------------------------------------------------------------- asterix
def asterix_rule(env: Any) -> int:
    g = env.env
    entities = [e for e in g.entities if e is not None]
    empty_rows = [i + 1 for i, e in enumerate(g.entities) if e is None]
    # Threats (x, row, heading, frame it appears, probability): the enemies on screen, and an enemy
    # that may spawn at either edge of an empty row when the spawn timer runs out.
    p_spawn = 1 / 3 / len(empty_rows) if empty_rows else 0.0
    threats = [(e[0], e[1], 1 if e[2] else -1, 0, 1.0) for e in entities if not e[3]]
    threats += [(x, row, d, g.spawn_timer, p_spawn) for row in empty_rows for x, d in ((0, 1), (9, -1))]

    def t_hit(dist: int, born: int) -> int:  # frame at which a threat born at frame `born` has moved `dist` cells
        if dist == 0:
            return born
        first_move = g.move_timer + max(0, -(-(born - g.move_timer) // g.move_speed)) * g.move_speed
        return first_move + (dist - 1) * g.move_speed

    def risk(x: int, y: int, frame: int) -> float:  # death (1000) if a threat is in (x, y) at `frame`, less if soon
        total = 0.0
        for ex, ey, d, born, p in threats:
            dist = (x - ex) * d  # cells the threat must cover to reach the cell (negative: moving away)
            if ey == y and dist >= 0:
                t_in, t_out = t_hit(dist, born), t_hit(dist + 1, born)
                total += p * (1000.0 if t_in <= frame <= t_out else 20.0 / (t_in - frame) if t_in > frame else 0.0)
            elif abs(ey - y) == 1 and 0 <= dist <= 1:  # an enemy next to the rows we could flee into
                total += 2.0 * p
        return total

    best, best_score = NOOP, -np.inf
    for a, (dx, dy) in _MOVES.items():
        nx, ny = min(max(g.player_x + dx, 0), 9), min(max(g.player_y + dy, 1), 8)
        nx2, ny2 = min(max(nx + dx, 0), 9), min(max(ny + dy, 1), 8)  # where a sticky repeat of `a` would go
        score = -risk(nx, ny, 0) - 0.1 * risk(nx2, ny2, 1) - 5.0 * (nx in (0, 9))
        score -= 0.5 * abs(ny - 4.5) / 4 + 0.1 * (a != NOOP)
        for ex, ey, _, gold in entities:  # pull toward gold, most when it is in the cell
            if gold:
                score += 3.0 / (1 + abs(nx - ex) + abs(ny - ey)) + 50.0 * (ey == ny and ex == nx)
        if score > best_score:
            best, best_score = a, score
    return best


# --------------------------------------------------------------------------------- space_invaders
def _alien_futures(g: Any, frames: int) -> list[np.ndarray]:
    """The alien map after each of the next ``frames`` frames (replays the aliens' march, no kills)."""
    amap, d, timer = np.array(g.alien_map, copy=True), g.alien_dir, g.alien_move_timer
    out = []
    for _ in range(frames):
        if timer == 0:
            timer = min(np.count_nonzero(amap), g.enemy_move_interval)
            if (amap[:, 0].any() and d < 0) or (amap[:, 9].any() and d > 0):
                d, amap = -d, np.roll(amap, 1, axis=0)
            else:
                amap = np.roll(amap, d, axis=1)
        timer -= 1
        out.append(amap)
    return out


def space_invaders_rule(env: Any) -> int:
    g = env.env
    bullets, futures = g.e_bullet_map, _alien_futures(g, 30)

    def danger(x: int) -> float:  # 1: a bullet or alien lands on column x this frame; less: soon
        return 1.0 * (bullets[8, x] or futures[0][9, x]) + 0.5 * bullets[7, x] + 0.2 * bullets[6, x]

    def hits(col: int, wait: int) -> bool:  # whether a shot fired from col after `wait` frames meets an alien
        return any(futures[wait + k - 1][9 - k, col] for k in range(1, 10))

    if g.shot_timer == 0 and danger(g.pos) == 0 and hits(g.pos, 0):
        return FIRE
    # Head for the nearest column from which a shot fired on arrival (and off cooldown) would hit.
    options = [c for c in range(10) if hits(c, max(abs(c - g.pos), g.shot_timer))]
    target = min(options, key=lambda c: abs(c - g.pos), default=g.pos)
    moves = {NOOP: g.pos, LEFT: max(0, g.pos - 1), RIGHT: min(9, g.pos + 1)}
    return min(moves, key=lambda a: (danger(moves[a]), abs(moves[a] - target)))


# --------------------------------------------------------------------------------------- seaquest
def seaquest_rule(env: Any) -> int:
    g = env.env
    x, y, facing = g.sub_x, g.sub_y, 1 if g.sub_or else -1
    enemies = [(e[0], e[1], 1 if e[2] else -1) for e in g.e_fish + g.e_subs]
    shots = [(b[0], b[1], 1 if b[2] else -1) for b in g.e_bullets]
    # MinAtar ends the game on surfacing with exactly 0 divers (after 6 are cashed in the count is -1).
    can_surface = g.diver_count != 0

    def danger(nx: int, ny: int) -> float:
        if ny == 0:
            return 0.0 if can_surface or y == 0 else 1000.0
        risk = 5.0 * (nx in (0, 9))  # enemies spawn at the edges
        for ex, ey, d, reach in [(*e, 2) for e in enemies] + [(*b, 3) for b in shots]:  # bullets are faster
            dist = (nx - ex) * d  # cells the enemy or bullet must cover to reach the cell
            if ey == ny and 0 <= dist <= reach:
                risk += 1000.0 if dist <= 1 else 100.0 if dist == 2 else 30.0
        return risk

    def moved(px: int, py: int, a: int) -> tuple[int, int]:
        dx, dy = _MOVES.get(a, (0, 0))
        return min(max(px + dx, 0), 9), min(max(py + dy, 0), 8)

    # Safety of the cell `a` leads to, and (weight 0.1) of the one a sticky repeat of `a` would reach.
    scores = {a: -danger(*moved(x, y, a)) - 0.1 * danger(*moved(*moved(x, y, a), a)) for a in range(6)}
    in_row = [e for e in enemies if e[1] == y]
    ahead = [e for e in in_row if (e[0] - x) * facing > 0]
    closing_behind = [e for e in in_row if (e[0] - x) * facing < 0 and e[2] == facing]
    if (can_surface and g.oxygen < 4 * y + 20) or g.diver_count == 6:
        scores[UP] += 50.0
    elif y == 0:
        scores[DOWN] += 50.0
    elif ahead and g.shot_timer == 0:
        scores[FIRE] += 50.0
    elif closing_behind and not ahead:
        scores[LEFT if facing > 0 else RIGHT] += 30.0
    else:
        # Head for the nearest diver's row (while there is room), else the nearest enemy's row.
        targets = [(dv[1], dv[0]) for dv in g.divers] if g.diver_count < 6 else []
        targets = targets or [(e[1], e[0]) for e in enemies]
        ty, tx = min(targets, key=lambda t: abs(t[0] - y) + abs(t[1] - x), default=(4, 4))
        scores[UP if ty < y else DOWN if ty > y else _toward(x, tx)] += 20.0
        scores[_toward(x, tx)] += 5.0
    return max(scores, key=lambda a: scores[a])


RULES: dict[str, Callable[[Any], int]] = {
    "asterix": asterix_rule,
    "breakout": breakout_rule,
    "freeway": freeway_rule,
    "seaquest": seaquest_rule,
    "space_invaders": space_invaders_rule,
}
