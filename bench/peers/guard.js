// Loaded with `node --require` by bench/compare before either peer: refuses any TCP
// connection that is not to the loopback, so nothing can reach 169.254.169.254 (or
// anywhere else) even if a library ignored AZURE_POD_IDENTITY_AUTHORITY_HOST.
'use strict';
const net = require('net');

const loopback = /^(127\.\d+\.\d+\.\d+|localhost|::1|\[::1\])$/i;
const connect = net.Socket.prototype.connect;

net.Socket.prototype.connect = function guardedConnect(...args) {
  let options = args[0];
  if (Array.isArray(options)) options = options[0];  // net's normalized [options, callback]
  let host;
  if (options !== null && typeof options === 'object') {
    if (options.path !== undefined) return connect.apply(this, args);  // a Unix socket
    host = options.host;
  } else if (typeof args[1] === 'string') {
    host = args[1];
  }
  if (host === undefined) host = 'localhost';  // net's default
  if (!loopback.test(String(host))) {
    throw new Error(`bench guard: refusing a connection to ${host} (only the loopback emulator is allowed)`);
  }
  return connect.apply(this, args);
};
