/* kite cert: a private PKI for mutual TLS (CA, server and client
 * certificates, CRL, inspection and config checks), all through OpenSSL 3.
 * argv[0] is "cert"; returns the process exit status (0 ok, 1 error,
 * 2 usage). */
#ifndef KITE_TOOLS_CERT_H
#define KITE_TOOLS_CERT_H

int cert_main(int argc, char **argv);

#endif
