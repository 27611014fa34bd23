-- Drive examples/spamtrap.py (already listening at SOCKET, passed with -D SOCKET=...).
-- Message 1 is from the spammer: quarantined and stamped; message 2 only stamped.

-- miltertest does not print the message of error(); fail() does, then exits 1.
local function fail(why)
    print("FAIL: " .. why)
    io.stdout:flush()
    os.exit(1)
end

conn = mt.connect(SOCKET, 40, 0.25)
if conn == nil then fail("mt.connect(" .. SOCKET .. ") failed") end

-- Offer what Postfix offers; SpamTrap disables every step but MAIL and EOM.
if mt.negotiate(conn, 6, SMFIF_ADDHDRS + SMFIF_QUARANTINE + SMFIF_SETSYMLIST, 0x1FFFFF) ~= nil then
    fail("mt.negotiate() failed")
end

local function message(sender, spam)
    mt.macro(conn, SMFIC_MAIL, "{auth_authen}", "alice")
    if mt.mailfrom(conn, sender) ~= nil then fail("mt.mailfrom() failed") end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("MAIL: expected continue") end
    if mt.eoh(conn) ~= nil then fail("mt.eoh() failed") end
    if mt.eom(conn) ~= nil then fail("mt.eom() failed") end
    if mt.getreply(conn) ~= SMFIR_ACCEPT then fail("EOM: expected accept") end
    if not mt.eom_check(conn, MT_HDRADD, "X-Checked", "yes") then
        fail("no X-Checked: yes header added")
    end
    if spam and not mt.eom_check(conn, MT_QUARANTINE, "Spammer in quarantine!") then
        fail("spammer not quarantined")
    end
    if not spam and mt.eom_check(conn, MT_QUARANTINE) then
        fail("innocent mail quarantined")
    end
end

message("<SpamEri@tiscali.it>", true)
message("<friend@example.org>", false)
mt.disconnect(conn)
print("spamtrap.lua: ok")
