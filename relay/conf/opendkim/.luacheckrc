-- luacheck config for OpenDKIM's policy scripts (Lua 5.1, as Debian's OpenDKIM embeds).
std = "lua51"
-- What OpenDKIM defines for a script: its API table, the message context, the result
-- constants; and what the scripts share: from_policy_values.lua's locals (put in front
-- of from_policy.lua at start) and the variable from_policy.lua exports.
read_globals = {
  "odkim", "ctx", "SMFIS_REJECT",
  "DOMAIN", "DOMAINS", "KEY", "NOTICE_FROM", "MAY_SEND_AS", "REFUSE",
}
