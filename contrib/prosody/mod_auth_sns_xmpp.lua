-- sns-xmpp's HTTP authentication for Prosody 0.12: social login for an existing Prosody.
--
-- Passwords are checked by sns-xmpp's HTTP side (POST <url>/check, the JSON of prosody-modules'
-- mod_auth_custom_http plus the host), and so is whether a user exists (POST <url>/exists), which
-- Prosody asks before it keeps an offline message: a social user (carol\40demo) exists once
-- linked. Unlike mod_auth_custom_http (not in Debian's prosody-modules), it waits for sns-xmpp
-- without blocking Prosody, sends the shared secret, and answers user_exists.
--
--   VirtualHost "example.org"
--     authentication = "sns_xmpp"
--     sns_xmpp_auth_url = "http://127.0.0.1:5280/auth"
--     sns_xmpp_auth_secret = "<[http] auth_secret of sns-xmpp>"
--
-- Only PLAIN is offered (sns-xmpp holds the passwords): keep c2s_require_encryption on.
-- Accounts are made and changed with sns-xmpp-admin, not by Prosody (in-band registration and
-- password changes are refused here). See docs/operations.md in sns-xmpp.

local new_sasl = require "util.sasl".new;
local async = require "util.async";
local http = require "net.http";
local json = require "util.json";
local base64 = require "util.encodings".base64;

local host = module.host;
local base_url = module:get_option_string("sns_xmpp_auth_url");
local secret = module:get_option_string("sns_xmpp_auth_secret");
assert(base_url, "sns_xmpp_auth_url is required (sns-xmpp's HTTP side, e.g. http://127.0.0.1:5280/auth)");
assert(secret, "sns_xmpp_auth_secret is required ([http] auth_secret in sns-xmpp's configuration)");
base_url = base_url:gsub("/$", "");

local headers = {
	["Content-Type"] = "application/json";
	["Authorization"] = "Basic " .. base64.encode("prosody:" .. secret);
};

-- true, false, or nil and an error when sns-xmpp could not answer.
local function ask(question, document)
	local url = base_url .. "/" .. question;
	local body = json.encode(document);
	if async.ready() then -- in a session's thread: wait without blocking the server
		local ok, response = pcall(async.wait_for, http.request(url, { method = "POST", body = body, headers = headers }));
		if not ok or not response then
			module:log("warn", "sns-xmpp did not answer %s: %s", question, tostring(response));
			return nil, "sns-xmpp did not answer";
		end
		if response.code ~= 200 then
			module:log("warn", "sns-xmpp answered %s with HTTP %s", question, tostring(response.code));
			return nil, "sns-xmpp refused the question";
		end
		return response.body == "true";
	end
	-- Outside a thread (prosodyctl, a timer): LuaSocket, which blocks until sns-xmpp answers.
	local socket_http = require "socket.http";
	local ltn12 = require "ltn12";
	local chunks = {};
	local request_headers = { ["Content-Length"] = tostring(#body) };
	for name, value in pairs(headers) do request_headers[name] = value; end
	local ok, code = socket_http.request({ url = url, method = "POST", headers = request_headers,
		source = ltn12.source.string(body), sink = ltn12.sink.table(chunks) });
	if not ok or code ~= 200 then
		module:log("warn", "sns-xmpp did not answer %s: %s", question, tostring(code));
		return nil, "sns-xmpp did not answer";
	end
	return table.concat(chunks) == "true";
end

local provider = {};

function provider.test_password(username, password)
	return ask("check", { username = username, password = password, domain = host });
end

function provider.user_exists(username)
	return ask("exists", { username = username, domain = host });
end

function provider.get_password()
	return nil, "Passwords are kept by sns-xmpp";
end

function provider.set_password()
	return nil, "Passwords are changed with sns-xmpp-admin";
end

function provider.create_user()
	return nil, "Accounts are made with sns-xmpp-admin or by logging in at a social site";
end

function provider.delete_user()
	return nil, "Accounts are removed with sns-xmpp-admin";
end

function provider.users()
	return function() return nil; end;
end

function provider.get_sasl_handler()
	return new_sasl(host, {
		plain_test = function(_, username, password)
			return provider.test_password(username, password), true;
		end;
	});
end

module:provides("auth", provider);
