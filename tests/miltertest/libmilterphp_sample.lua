-- Drive the libMilterPHP sample (examples/libmilterphp_sample.py) at SOCKET.
-- It speaks protocol version 2, asks only for QUARANTINE and disables
-- connect, helo, rcpt, body, headers and end-of-headers.

-- miltertest does not print the message of error(); fail() does, then exits 1.
local function fail(why)
    print("FAIL: " .. why)
    io.stdout:flush()
    os.exit(1)
end

conn = mt.connect(SOCKET, 40, 0.25)
if conn == nil then fail("mt.connect(" .. SOCKET .. ") failed") end
if mt.negotiate(conn, 6, SMFIF_QUARANTINE + SMFIF_ADDHDRS, 0x1FFFFF) ~= nil then
    fail("mt.negotiate() failed")
end

local function message(sender, spam)
    if mt.mailfrom(conn, sender) ~= nil then fail("mt.mailfrom() failed") end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("MAIL: expected continue") end
    if mt.eom(conn) ~= nil then fail("mt.eom() failed") end
    if mt.getreply(conn) ~= SMFIR_CONTINUE then fail("EOM: expected continue") end
    if spam ~= mt.eom_check(conn, MT_QUARANTINE, "Spammer in quarantine!") then
        fail("quarantine mismatch for " .. sender)
    end
end

message("<spameri@tiscali.it>", true)
message("<friend@example.org>", false)
mt.disconnect(conn)
print("libmilterphp_sample.lua: ok")
