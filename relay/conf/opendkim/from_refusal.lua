-- OpenDKIM FinalPolicyScript: refuse with the reason from_policy.lua exported (only
-- here does Debian's OpenDKIM offer set_reply), before the signature is made.
if REFUSE ~= nil then
  odkim.set_reply(ctx, "550", "5.7.1", REFUSE)
  odkim.set_result(ctx, SMFIS_REJECT)
end
