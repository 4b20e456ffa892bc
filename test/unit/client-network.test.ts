// worker/limits.ts clientNetwork: what a per-address rate limit counts by (an IPv6 host picks any address of its /64).
import { describe, expect, it } from 'vitest';
import { clientNetwork } from '../../worker/limits.js';

describe('clientNetwork', () => {
  it('keeps an IPv4 address, and the IPv4 inside an IPv4-mapped IPv6 one', () => {
    expect(clientNetwork('203.0.113.7')).toBe('203.0.113.7');
    expect(clientNetwork('::ffff:203.0.113.7')).toBe('203.0.113.7');
  });
  it('counts every address of an IPv6 /64 as one, however it is spelled', () => {
    const net = '2001:db8:12:34::/64';
    for (const ip of ['2001:db8:12:34::1', '2001:0db8:0012:0034:ffff:ffff:ffff:fffe', '2001:DB8:12:34:0:0:0:9', '[2001:db8:12:34::5]', '2001:db8:12:34::1%eth0']) {
      expect(clientNetwork(ip), ip).toBe(net);
    }
    expect(clientNetwork('2001:db8:12:35::1')).not.toBe(net);
    expect(clientNetwork('::1')).toBe('0:0:0:0::/64');
    expect(clientNetwork('2001:db8::')).toBe('2001:db8:0:0::/64');
  });
  it('counts what is not an address as given', () => {
    expect(clientNetwork('unknown')).toBe('unknown');
    expect(clientNetwork('1:2:3:4:5:6:7:8:9')).toBe('1:2:3:4:5:6:7:8:9');
    expect(clientNetwork('zz::1')).toBe('zz::1');
  });
});
