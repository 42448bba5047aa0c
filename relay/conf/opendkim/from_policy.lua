-- OpenDKIM SetupPolicyScript: the header From must be exactly one address at the domain,
-- one the SASL login may use (its may_send_as entries, else any address at the domain).
-- At start the entrypoint puts the stack's values in front of this file
-- (opendkim/from_policy_values.lua, rendered by pure/postfix.py):
--   local DOMAIN, KEY, NOTICE_FROM   -- "example.com", "<selector>._domainkey.<domain>",
--                                    -- "mailer-daemon@<relay host>"
--   local MAY_SEND_AS                -- login -> { "addr@domain" or "@domain", ... }
--   local DOMAINS                    -- only with several domains: { ["@domain"] = true }
-- Linted with luacheck (relay/conf/opendkim/.luacheckrc).
-- Mail whose From is not ours would go out unsigned, or signed for a sender the login
-- does not own. Postfix checks only the envelope (reject_sender_login_mismatch).
-- OpenDKIM's setup hook has no set_reply, so the reason is handed to the final script
-- (from_refusal.lua), which refuses with it before the signature is made. The sign
-- request keeps OpenDKIM on the message until then: without one (a foreign From) it
-- would accept the message at the end of the headers and never run the final script.
local function refuse(why)
  odkim.export(ctx, "REFUSE", why)
  odkim.sign(ctx, KEY)
end

-- The addr-spec of a From value holding exactly one mailbox, else nil. Quoted strings
-- and comments are dropped first (a display name may hold "@", "," or "<").
local function mailbox(value)
  local out, quoted, depth, escaped = {}, false, 0, false
  for c in value:gmatch(".") do
    if escaped then
      escaped = false
    elseif c == "\\" and (quoted or depth > 0) then
      escaped = true
    elseif quoted then
      if c == '"' then quoted = false end
    elseif depth > 0 then
      if c == "(" then depth = depth + 1 elseif c == ")" then depth = depth - 1 end
    elseif c == '"' then
      quoted = true
    elseif c == "(" then
      depth = 1
    else
      out[#out + 1] = c
    end
  end
  if quoted or depth > 0 then return nil end
  local rest = table.concat(out):gsub("%s+", " ")
  if rest:find("[,;:]") then return nil end
  local addr = rest:match("^[^<>]*<([^<>]*)>%s*$") or rest:match("^%s*([^%s<>]+)%s*$")
  if addr == nil then return nil end
  addr = addr:lower()
  if addr:match("^[^@%s]+@[^@%s]+$") == nil then return nil end
  return addr
end

-- OpenDKIM also runs this once at start-up with a null ctx to check it, where the
-- odkim functions return their own names: stop there.
if odkim.get_envfrom(ctx) == "dkimf_xs_getenvfrom"
    and odkim.get_mtasymbol(ctx, "{auth_authen}") == "dkimf_xs_getmtasymbol" then
  return
end

local from = odkim.get_header(ctx, "From", 0)
if from == nil or odkim.get_header(ctx, "From", 1) ~= nil then
  refuse("the message needs exactly one From: header")
  return
end
local addr = mailbox(from)
if addr == nil then
  refuse("the From: header must hold exactly one address")
  return
end
local login = (odkim.get_mtasymbol(ctx, "{auth_authen}") or ""):lower()
-- Postfix's own notices (bounces, delay warnings): no login, the null envelope sender,
-- From MAILER-DAEMON@<relay host>. They are signed (the signing table has the host).
-- Submitted mail always has a login, and the null sender is refused there.
local envfrom = odkim.get_envfrom(ctx) or ""
if login == "" and (envfrom == "<>" or envfrom == "") and addr == NOTICE_FROM then
  return
end
local at_domain = addr:match("(@[^@]+)$")
if not (DOMAINS or { ["@" .. DOMAIN] = true })[at_domain] then
  refuse("From: " .. addr .. " is not at " .. DOMAIN)
  return
end
for _, pattern in ipairs(MAY_SEND_AS[login] or {}) do
  if pattern == addr or pattern == at_domain then
    return
  end
end
refuse("login " .. login .. " may not send with From: " .. addr)
