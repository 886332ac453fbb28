//! The room directory in Redis: `<prefix>room:<room>` holds `"<node> <epoch> <participants>"`
//! with a lease the owner renews every second. Claims, renewals and releases are Lua scripts, so
//! each is one atomic step (no read-then-write race between nodes placing the same room).
//!
//! Epochs fence ownership: every new owner gets a larger one (`max(old + 1, Redis time in ms)`,
//! so a room key that expired or a Redis that restarted empty still yields a larger epoch than
//! any before it, without a counter key to keep).

/// Claim `KEYS[1]` for `ARGV[1]` (lease `ARGV[2]` ms) unless a live node holds it. A node is
/// alive while its registry key `ARGV[3] .. node` exists; a target that is not (the caller's
/// registry may be a second old) is replaced by `ARGV[4]`, the caller itself (or '' when it
/// drains). Returns `{owner, epoch, status, previous}`: status `owned` (a live owner kept it;
/// renewed when it is the target), `claimed` (it was free) or `taken_over` (its owner was dead:
/// `previous`). An empty target claims nothing: a free room answers `{'', '0', 'free', ''}`.
pub const CLAIM: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local target = ARGV[1]
if target ~= ARGV[4] and target ~= '' and redis.call('EXISTS', ARGV[3] .. target) == 0 then
  target = ARGV[4]
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local owner, epoch, n = string.match(cur, '^(%S+) (%d+) (%d+)$')
  if owner then
    if owner == target then
      redis.call('PEXPIRE', KEYS[1], ARGV[2])
      return {owner, epoch, 'owned', ''}
    end
    if redis.call('EXISTS', ARGV[3] .. owner) == 1 then
      return {owner, epoch, 'owned', ''}
    end
    if target == '' then return {'', '0', 'free', ''} end
    local e = math.max(tonumber(epoch) + 1, now)
    redis.call('SET', KEYS[1], target .. ' ' .. string.format('%d', e) .. ' 0', 'PX', ARGV[2])
    return {target, string.format('%d', e), 'taken_over', owner}
  end
end
if target == '' then return {'', '0', 'free', ''} end
redis.call('SET', KEYS[1], target .. ' ' .. string.format('%d', now) .. ' 0', 'PX', ARGV[2])
return {target, string.format('%d', now), 'claimed', ''}
";

/// Renews the rooms `KEYS` this node (`ARGV[1]`, lease `ARGV[2]` ms, registry prefix `ARGV[3]`)
/// hosts, `ARGV[4..]` giving the participants it has in each. Per room: `ok <epoch>` (still
/// ours), `reclaimed <epoch>` (the key was gone, e.g. Redis restarted, or its owner is dead, or
/// it holds fewer participants than we do: a split room is merged into the larger side), or
/// `lost <owner>` (a live node with at least as many participants holds it: ours must move).
pub const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for i, key in ipairs(KEYS) do
  local n = tonumber(ARGV[3 + i])
  local cur = redis.call('GET', key)
  local owner, epoch, count
  if cur then owner, epoch, count = string.match(cur, '^(%S+) (%d+) (%d+)$') end
  if owner == ARGV[1] then
    redis.call('SET', key, owner .. ' ' .. epoch .. ' ' .. n, 'PX', ARGV[2])
    out[i] = 'ok ' .. epoch
  elseif owner and redis.call('EXISTS', ARGV[3] .. owner) == 1 and tonumber(count) >= n then
    out[i] = 'lost ' .. owner
  else
    local e = now
    if epoch then e = math.max(tonumber(epoch) + 1, now) end
    redis.call('SET', key, ARGV[1] .. ' ' .. string.format('%d', e) .. ' ' .. n, 'PX', ARGV[2])
    out[i] = 'reclaimed ' .. string.format('%d', e)
  end
end
return out
";

/// Deletes the rooms `KEYS` that `ARGV[1]` still owns; returns how many.
pub const RELEASE: &str = r"
local gone = 0
for _, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  if cur and string.match(cur, '^(%S+) ') == ARGV[1] then
    redis.call('DEL', key)
    gone = gone + 1
  end
end
return gone
";

/// What a claim answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub owner: String,
    pub epoch: i64,
    /// The room had a dead owner, now replaced: this one.
    pub took_over_from: Option<String>,
    /// The claim made the owner (`claimed` or `taken_over`) rather than found it.
    pub fresh: bool,
}

impl Claim {
    pub fn parse(reply: &[String]) -> Option<Claim> {
        let [owner, epoch, status, previous] = reply else {
            return None;
        };
        Some(Claim {
            owner: owner.clone(),
            epoch: epoch.parse().ok()?,
            took_over_from: (status == "taken_over" && !previous.is_empty())
                .then(|| previous.clone()),
            fresh: status == "claimed" || status == "taken_over",
        })
    }
}

/// What a renewal answered for one room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewal {
    Kept(i64),
    Reclaimed(i64),
    Lost(String),
}

impl Renewal {
    pub fn parse(s: &str) -> Option<Renewal> {
        let (what, arg) = s.split_once(' ')?;
        match what {
            "ok" => Some(Renewal::Kept(arg.parse().ok()?)),
            "reclaimed" => Some(Renewal::Reclaimed(arg.parse().ok()?)),
            "lost" => Some(Renewal::Lost(arg.to_owned())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse() {
        let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Claim::parse(&r(&["pc2", "1764800000000", "taken_over", "pc1"])),
            Some(Claim {
                owner: "pc2".into(),
                epoch: 1_764_800_000_000,
                took_over_from: Some("pc1".into()),
                fresh: true,
            })
        );
        assert_eq!(
            Claim::parse(&r(&["pc1", "5", "owned", ""]))
                .unwrap()
                .took_over_from,
            None
        );
        assert_eq!(Claim::parse(&r(&["pc1", "x", "owned", ""])), None);
        assert_eq!(Renewal::parse("ok 7"), Some(Renewal::Kept(7)));
        assert_eq!(Renewal::parse("reclaimed 9"), Some(Renewal::Reclaimed(9)));
        assert_eq!(
            Renewal::parse("lost pc3"),
            Some(Renewal::Lost("pc3".into()))
        );
        assert_eq!(Renewal::parse("what"), None);
    }
}
