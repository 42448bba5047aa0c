#!/usr/bin/perl
# relay-milter-probe [socket] [seconds]: exit 0 when the milter on the unix socket
# answers a milter option negotiation and a connect event within the time limit (default
# 2 s), as Postfix's smtpd does at the start of every session; exit 1 otherwise, with the
# reason on stdout. A hung OpenDKIM (SIGSTOP, deadlock) still accepts connections on its
# socket (the kernel queues them), so only an answer proves it works. perl-base only:
# nothing extra in the image.
use strict;
use warnings;
use IO::Socket::UNIX;

my $path    = $ARGV[0] // '/run/opendkim/opendkim.sock';
my $timeout = $ARGV[1] // 2;

# milter protocol v6 (libmilter/mfdef.h)
my $SMFIP_NOCONNECT = 0x1;
my $SMFIP_NR_CONN   = 0x1000;

sub fail { print "milter: $_[0]\n"; exit 1 }

sub packet {
    my ($cmd, $data) = @_;
    return pack('N', 1 + length $data) . $cmd . $data;
}

sub read_exact {
    my ($sock, $n) = @_;
    my $buf = '';
    while (length $buf < $n) {
        my $got = sysread($sock, $buf, $n - length $buf, length $buf);
        fail("connection closed") if !$got;
    }
    return $buf;
}

sub reply {
    my ($sock) = @_;
    my $len = unpack('N', read_exact($sock, 4));
    fail("bad reply length $len") if $len < 1 || $len > 65536;
    my $body = read_exact($sock, $len);
    return (substr($body, 0, 1), substr($body, 1));
}

local $SIG{ALRM} = sub { fail("no answer within ${timeout} s") };
alarm $timeout;

my $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $path)
  or fail("cannot connect to $path: $!");
syswrite($sock, packet('O', pack('NNN', 6, 0x1ff, 0x1fffff))) or fail("write: $!");
my ($cmd, $data) = reply($sock);
fail("option negotiation answered '$cmd'") if $cmd ne 'O' || length $data < 12;
my (undef, undef, $proto) = unpack('NNN', $data);

if (!($proto & ($SMFIP_NOCONNECT | $SMFIP_NR_CONN))) {
    syswrite($sock, packet('C', "probe.localhost\0" . '4' . pack('n', 0) . "127.0.0.1\0"))
      or fail("write: $!");
    ($cmd) = reply($sock);
    fail("connect event answered '$cmd'") if $cmd ne 'c' && $cmd ne 'a';
}
syswrite($sock, packet('Q', ''));
alarm 0;
print "milter answers\n";
exit 0;
