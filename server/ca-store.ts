/**
 * The domain CAs under <data_dir>/ca/<domain>/{key.pem,cert.pem}. A CA is
 * created on first start for each configured domain, and never for a domain
 * that is not configured (the original created one for any name asked).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createDomainCa, describeCertificate } from '../q2q/identity';

export interface DomainCa {
  domain: string;
  certPem: string;
  keyPem: string;
  fingerprint: string;
}

/** Writes `text` to `file` through a temporary name so a crash never leaves half a key. */
export function writeFileAtomic(file: string, text: string, mode: number): void {
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, text, { mode });
  fs.chmodSync(tmp, mode);
  fs.renameSync(tmp, file);
}

export function caDir(dataDir: string, domain: string): string {
  return path.join(dataDir, 'ca', domain);
}

export async function loadOrCreateCa(dataDir: string, domain: string): Promise<{ ca: DomainCa; created: boolean }> {
  const dir = caDir(dataDir, domain);
  const keyFile = path.join(dir, 'key.pem');
  const certFile = path.join(dir, 'cert.pem');
  let created = false;
  if (!fs.existsSync(keyFile) || !fs.existsSync(certFile)) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    const ca = await createDomainCa(domain);
    writeFileAtomic(keyFile, ca.keyPem, 0o600);
    writeFileAtomic(certFile, ca.certPem, 0o644);
    created = true;
  }
  const keyPem = fs.readFileSync(keyFile, 'utf8');
  const certPem = fs.readFileSync(certFile, 'utf8');
  return { ca: { domain, keyPem, certPem, fingerprint: describeCertificate(certPem).fingerprint }, created };
}
