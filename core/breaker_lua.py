"""The breaker's Lua scripts: one per admission, one per outcome, one for operators.

A line-by-line port of ``core.breaker_core`` (its docstring numbers the steps).
Each runs atomically inside Redis and reads the Redis server's clock, never a caller's.
Numbers that must keep their fraction go back to Python as strings: Redis truncates
Lua numbers in replies to integers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

_OPEN = """
local function open_breaker(h, w, trials, now, wait)
  redis.call('HSET', h, 'state', 'open', 'opened_at', string.format('%.6f', now),
    'open_until', string.format('%.6f', now + wait), 'window_calls', 0, 'window_failures', 0)
  redis.call('HINCRBY', h, 'epoch', 1)
  redis.call('DEL', w, trials)
end
local function close_breaker(h, w, trials)
  redis.call('HSET', h, 'state', 'closed', 'reopens', 0, 'consecutive_failures', 0,
    'ho_successes', 0, 'window_calls', 0, 'window_failures', 0)
  redis.call('HINCRBY', h, 'epoch', 1)
  redis.call('DEL', w, trials)
end
local function server_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
"""

# KEYS: hash, window, trials. ARGV: token, half_open_calls, trial_timeout.
# Returns {admitted 0/1/2 (2 = trial), state, epoch, retry_at or ''}.
ADMIT_LUA = (
    _OPEN
    + """
local h, trials = KEYS[1], KEYS[3]
local now = server_now()
local s = redis.call('HMGET', h, 'state', 'epoch', 'open_until', 'ho_successes')
local state = s[1] or 'closed'
local epoch = tonumber(s[2] or '0')
if state == 'closed' or state == 'disabled' then
  redis.call('HINCRBY', h, 'total_calls', 1)
  return {1, state, epoch, ''}
end
if state == 'forced_open' then
  redis.call('HINCRBY', h, 'rejected_calls', 1)
  return {0, state, epoch, ''}
end
local ho_successes = tonumber(s[4] or '0')
if state == 'open' then
  if now < tonumber(s[3] or '0') then
    redis.call('HINCRBY', h, 'rejected_calls', 1)
    return {0, state, epoch, s[3]}
  end
  state = 'half_open'
  epoch = redis.call('HINCRBY', h, 'epoch', 1)
  ho_successes = 0
  redis.call('HSET', h, 'state', state, 'ho_successes', 0)
  redis.call('DEL', trials)
end
redis.call('ZREMRANGEBYSCORE', trials, '-inf', string.format('%.6f', now))
if redis.call('ZCARD', trials) + ho_successes < tonumber(ARGV[2]) then
  redis.call('ZADD', trials, string.format('%.6f', now + tonumber(ARGV[3])), ARGV[1])
  redis.call('HINCRBY', h, 'total_calls', 1)
  return {2, state, epoch, ''}
end
redis.call('HINCRBY', h, 'rejected_calls', 1)
local first = redis.call('ZRANGE', trials, 0, 0, 'WITHSCORES')
return {0, state, epoch, first[2] or ''}
"""
)

# KEYS: hash, window, trials. ARGV: outcome, epoch, token, slow (0/1), window_size,
# minimum_calls, failure_rate_threshold, consecutive_failures, success_threshold,
# wait_seconds, wait_multiplier, max_wait_seconds, count the call (0/1: admitted
# without the admission script). Returns {state, epoch} after it.
RECORD_LUA = (
    _OPEN
    + """
local h, w, trials = KEYS[1], KEYS[2], KEYS[3]
local now = server_now()
local outcome = ARGV[1]
if ARGV[13] == '1' then redis.call('HINCRBY', h, 'total_calls', 1) end
if outcome == 'success' then
  redis.call('HINCRBY', h, 'successful_calls', 1)
elseif outcome == 'failure' then
  redis.call('HINCRBY', h, 'failed_calls', 1)
  redis.call('HSET', h, 'last_failure_at', string.format('%.6f', now))
else
  redis.call('HINCRBY', h, 'ignored_calls', 1)
end
if ARGV[4] == '1' then redis.call('HINCRBY', h, 'slow_calls', 1) end
local s = redis.call('HMGET', h, 'state', 'epoch', 'reopens')
local state = s[1] or 'closed'
local function reply()
  return {redis.call('HGET', h, 'state') or 'closed', tonumber(redis.call('HGET', h, 'epoch') or '0')}
end
if tonumber(ARGV[2]) ~= tonumber(s[2] or '0') then return reply() end
local function wait_for(reopens)
  return math.min(tonumber(ARGV[10]) * tonumber(ARGV[11]) ^ reopens, tonumber(ARGV[12]))
end
if state == 'closed' then
  if outcome == 'ignored' then return reply() end
  local bit = 0
  if outcome == 'failure' then bit = 1 end
  redis.call('RPUSH', w, bit)
  local calls = redis.call('HINCRBY', h, 'window_calls', 1)
  local failures = redis.call('HINCRBY', h, 'window_failures', bit)
  if redis.call('LLEN', w) > tonumber(ARGV[5]) then
    calls = redis.call('HINCRBY', h, 'window_calls', -1)
    if redis.call('LPOP', w) == '1' then failures = redis.call('HINCRBY', h, 'window_failures', -1) end
  end
  local run = 0
  if bit == 1 then run = redis.call('HINCRBY', h, 'consecutive_failures', 1)
  else redis.call('HSET', h, 'consecutive_failures', 0) end
  local limit = tonumber(ARGV[8])
  if (limit > 0 and run >= limit) or
     (calls >= tonumber(ARGV[6]) and failures * 100 >= tonumber(ARGV[7]) * calls) then
    open_breaker(h, w, trials, now, wait_for(tonumber(s[3] or '0')))
  end
  return reply()
end
if state == 'half_open' then
  if redis.call('ZREM', trials, ARGV[3]) == 0 or outcome == 'ignored' then return reply() end
  if outcome == 'failure' then
    redis.call('HINCRBY', h, 'consecutive_failures', 1)
    local reopens = redis.call('HINCRBY', h, 'reopens', 1)
    open_breaker(h, w, trials, now, wait_for(reopens))
  elseif redis.call('HINCRBY', h, 'ho_successes', 1) >= tonumber(ARGV[9]) then
    close_breaker(h, w, trials)
  end
end
return reply()
"""
)

# KEYS: hash, window, trials. ARGV: operation.
OPERATE_LUA = (
    _OPEN
    + """
local h, w, trials = KEYS[1], KEYS[2], KEYS[3]
local op = ARGV[1]
if op == 'force_open' then
  redis.call('HSET', h, 'state', 'forced_open', 'opened_at', string.format('%.6f', server_now()))
  redis.call('HINCRBY', h, 'epoch', 1)
elseif op == 'disable' then
  redis.call('HSET', h, 'state', 'disabled')
  redis.call('HINCRBY', h, 'epoch', 1)
elseif op == 'reset' then
  close_breaker(h, w, trials)
  redis.call('HDEL', h, 'opened_at', 'open_until')
elseif op == 'forget' then
  redis.call('DEL', h, w, trials)
  return 'forgotten'
else
  return redis.error_reply('unknown breaker operation ' .. op)
end
redis.call('DEL', trials)
return redis.call('HGET', h, 'state')
"""
)


@dataclass(frozen=True)
class _Script:
    source: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.source.encode()).hexdigest())  # noqa: S324 (Redis' id)


ADMIT, RECORD, OPERATE = _Script(ADMIT_LUA), _Script(RECORD_LUA), _Script(OPERATE_LUA)
