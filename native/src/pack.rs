//! `domain/state.py`'s packed user, byte for byte: a `<HH` head (pair count, length of the
//! rare fields' JSON), that JSON, then per pair a `<HBqqqqqqII` head, the bot id and the
//! inbound then outbound messages, `[ts, key]` little-endian.

use serde_json::{Map, Value};

use crate::state::{Id, Pair, User};

const ABSENT: i64 = i64::MIN; // None in a packed int field
const PAIR_HEAD: usize = 2 + 1 + 6 * 8 + 2 * 4;

fn some_or_absent(value: Option<i64>) -> i64 {
    value.unwrap_or(ABSENT)
}

fn absent_is_none(value: i64) -> Option<i64> {
    (value != ABSENT).then_some(value)
}

/// The rare fields not at their default, in `_RARE`'s order, as orjson writes them.
fn rare_json(user: &User) -> Vec<u8> {
    let (fields, mut rare) = (user.rare(), Map::new());
    if let Some(tz) = &fields.tz {
        rare.insert("tz".into(), Value::from(tz.as_str()));
    }
    if let Some(minor) = user.minor {
        rare.insert("minor".into(), Value::from(minor));
    }
    if user.opt_out_all {
        rare.insert("opt_out_all".into(), Value::from(true));
    }
    if !fields.opt_out_bots.is_empty() {
        rare.insert("opt_out_bots".into(), Value::from_iter(fields.opt_out_bots.iter().cloned()));
    }
    if !fields.opt_in_bots.is_empty() {
        rare.insert("opt_in_bots".into(), Value::from_iter(fields.opt_in_bots.iter().cloned()));
    }
    if !fields.opt_in_at.is_empty() {
        let at: Map<String, Value> = fields.opt_in_at.iter().map(|(bot, clock)| (bot.clone(), Value::from(*clock))).collect();
        rare.insert("opt_in_at".into(), Value::Object(at));
    }
    if user.distress_until != -1 {
        rare.insert("distress_until".into(), Value::from(user.distress_until));
    }
    if !user.sends.is_empty() {
        rare.insert("sends".into(), Value::from_iter(user.sends.iter().copied()));
    }
    if rare.is_empty() {
        return Vec::new();
    }
    serde_json::to_vec(&Value::Object(rare)).expect("a map of plain values always encodes")
}

fn push_messages(out: &mut Vec<u8>, messages: &[[i64; 2]]) {
    for [ts, key] in messages {
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&key.to_le_bytes());
    }
}

/// `pack_user(user, queue)` appended to `out`.
pub fn pack_user(out: &mut Vec<u8>, user: &User, queue: bool) {
    let rare = rare_json(user);
    out.extend_from_slice(&(user.pairs.len() as u16).to_le_bytes());
    out.extend_from_slice(&(rare.len() as u16).to_le_bytes());
    out.extend_from_slice(&rare);
    for (bot, pair) in &user.pairs {
        out.extend_from_slice(&(bot.len() as u16).to_le_bytes());
        out.push(pair.app);
        for value in [
            pair.last_ts,
            pair.last_inbound_ts,
            pair.last_inbound_key,
            some_or_absent(pair.due),
            some_or_absent(pair.emitted_at),
            if queue { some_or_absent(pair.queued) } else { ABSENT },
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(pair.inbound.len() as u32).to_le_bytes());
        out.extend_from_slice(&(pair.outbound.len() as u32).to_le_bytes());
        out.extend_from_slice(bot.as_bytes());
        push_messages(out, &pair.inbound);
        push_messages(out, &pair.outbound);
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        let end = self.at.checked_add(length).filter(|end| *end <= self.bytes.len()).ok_or("packed user is cut short")?;
        let part = &self.bytes[self.at..end];
        self.at = end;
        Ok(part)
    }

    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }

    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }

    fn messages(&mut self, count: u32) -> Result<Vec<[i64; 2]>, String> {
        let raw = self.take(16 * count as usize)?;
        Ok(raw.chunks_exact(16)
            .map(|m| [i64::from_le_bytes(m[..8].try_into().unwrap()), i64::from_le_bytes(m[8..].try_into().unwrap())])
            .collect())
    }
}

fn strings(value: &Value) -> Result<impl Iterator<Item = String> + '_, String> {
    let items = value.as_array().ok_or("a packed user's bot list is not a list")?;
    Ok(items.iter().filter_map(|item| item.as_str().map(str::to_owned)))
}

fn set_rare(user: &mut User, name: &str, value: &Value) -> Result<(), String> {
    let int = |value: &Value| value.as_i64().ok_or_else(|| format!("a packed user's {name} is not a whole number"));
    match name {
        "tz" => user.rare_mut().tz = value.as_str().map(str::to_owned),
        "minor" => user.minor = value.as_bool(),
        "opt_out_all" => user.opt_out_all = value.as_bool().unwrap_or(false),
        "opt_out_bots" => user.rare_mut().opt_out_bots = strings(value)?.collect(),
        "opt_in_bots" => user.rare_mut().opt_in_bots = strings(value)?.collect(),
        "opt_in_at" => {
            let at = value.as_object().ok_or("a packed user's opt_in_at is not an object")?;
            user.rare_mut().opt_in_at = at.iter().map(|(bot, clock)| Ok((bot.clone(), int(clock)?))).collect::<Result<_, String>>()?;
        }
        "distress_until" => user.distress_until = int(value)?,
        "sends" => {
            let sends = value.as_array().ok_or("a packed user's sends is not a list")?;
            user.sends = sends.iter().map(int).collect::<Result<_, String>>()?;
        }
        _ => return Err(format!("a packed user has an unknown field {name}")),
    }
    Ok(())
}

/// `unpack_user`; `intern` gives each bot id its shared string.
pub fn unpack_user(bytes: &[u8], mut intern: impl FnMut(&str) -> Id) -> Result<User, String> {
    let mut reader = Reader { bytes, at: 0 };
    let pairs = reader.u16()?;
    let rare_length = reader.u16()? as usize;
    let mut user = User::new();
    user.pairs.reserve_exact(pairs as usize); // a Vec's first push reserves four
    if rare_length > 0 {
        let rare: Map<String, Value> = serde_json::from_slice(reader.take(rare_length)?).map_err(|e| e.to_string())?;
        for (name, value) in &rare {
            set_rare(&mut user, name, value)?;
        }
    }
    for _ in 0..pairs {
        let mut head = Reader { bytes: reader.take(PAIR_HEAD)?, at: 0 };
        let bot_length = head.u16()? as usize;
        let app = head.take(1)?[0];
        if app > 3 {
            return Err(format!("a packed pair has an unknown app code {app}"));
        }
        let mut pair = Pair::new();
        pair.app = app;
        pair.last_ts = head.i64()?;
        pair.last_inbound_ts = head.i64()?;
        pair.last_inbound_key = head.i64()?;
        pair.due = absent_is_none(head.i64()?);
        pair.emitted_at = absent_is_none(head.i64()?);
        pair.queued = absent_is_none(head.i64()?);
        let (inbound, outbound) = (head.u32()?, head.u32()?);
        let bot = std::str::from_utf8(reader.take(bot_length)?).map_err(|e| e.to_string())?;
        let bot = intern(bot);
        pair.inbound = reader.messages(inbound)?;
        pair.outbound = reader.messages(outbound)?;
        user.pairs.push((bot, pair));
    }
    Ok(user)
}
