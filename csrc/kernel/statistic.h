// The running statistics' arithmetic, which the loops (one copy per
// instruction set) and adafactor_fused.cpp must do alike, bit for bit: pass
// F1 forms each row's new statistic as the host code will store it.
//
// No includes and no namespace: each user includes this inside its own
// anonymous namespace, so that the copies compiled with different flags
// never share a symbol.
#pragma once

// ATen's lerp: exact at both ends.
template <class T>
inline T lerp(T self, T end, T weight) {
  return weight < T(0.5) ? self + weight * (end - self) : end - (end - self) * (T(1) - weight);
}

// A row or column statistic after this step, from the one before and this
// step's mean of G^2 (+ eps1): torch's and big_vision's lerp towards the
// mean (weight w), or transformers' beta2 * old + (1 - beta2) * mean.
template <class T>
inline T advanced_statistic(T old, T mean, bool stats_lerp, T w, T b2, T ob2) {
  return stats_lerp ? lerp(old, mean, w) : old * b2 + mean * ob2;
}
