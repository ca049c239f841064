/**
 * A minimal DER reader for the few certificate fields node:crypto's
 * X509Certificate does not give exactly: the serial's bytes, the subject and
 * issuer common names, the SAN URIs and basicConstraints' cA flag.
 *
 * Why not X509Certificate's own strings: `serialNumber` prints a negative
 * serial with a minus sign, `subject` and `subjectAltName` are display text
 * with escaping rules that changed across Node releases, and `ca` is
 * OpenSSL's X509_check_ca, which also looks at keyUsage, so it says false
 * for a certificate with basicConstraints CA:TRUE and no keyCertSign, which
 * must still count as a CA when a user certificate is checked.
 *
 * Layout read (RFC 5280 §4.1, DER per X.690 §8 and §10):
 *
 *   Certificate  ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
 *   TBSCertificate ::= SEQUENCE {
 *     version [0] EXPLICIT INTEGER OPTIONAL,  serialNumber INTEGER,
 *     signature AlgorithmIdentifier,          issuer Name,
 *     validity Validity,                      subject Name,
 *     subjectPublicKeyInfo SEQUENCE,
 *     issuerUniqueID [1] IMPLICIT OPTIONAL,   subjectUniqueID [2] IMPLICIT OPTIONAL,
 *     extensions [3] EXPLICIT SEQUENCE OF Extension OPTIONAL }
 *   Name ::= SEQUENCE OF SET OF SEQUENCE { type OID, value ANY }
 *   Extension ::= SEQUENCE { extnID OID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }
 *   GeneralNames ::= SEQUENCE OF GeneralName   (uniformResourceIdentifier is [6] IMPLICIT IA5String)
 *   BasicConstraints ::= SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLenConstraint INTEGER OPTIONAL }
 *
 * Each element is tag (one byte), length (short form, or 0x81..0x84 then
 * that many big-endian bytes), contents. Every read is checked against the
 * end of the element that holds it; anything else throws CertificateInvalid.
 * The input has already been accepted by OpenSSL, so this is a second,
 * stricter reader, never the first line of defence.
 */
import { VertexError } from '../errors';

// ---- specification (X.690 identifier octets) ----
const TAG_BOOLEAN = 0x01;
const TAG_INTEGER = 0x02;
const TAG_OCTET_STRING = 0x04;
const TAG_OID = 0x06;
const TAG_UTF8_STRING = 0x0c;
const TAG_NUMERIC_STRING = 0x12;
const TAG_PRINTABLE_STRING = 0x13;
const TAG_TELETEX_STRING = 0x14;
const TAG_IA5_STRING = 0x16;
const TAG_VISIBLE_STRING = 0x1a;
const TAG_UNIVERSAL_STRING = 0x1c;
const TAG_BMP_STRING = 0x1e;
const TAG_SEQUENCE = 0x30;
const TAG_SET = 0x31;
/** Context-specific tags inside TBSCertificate and GeneralName. */
const TAG_VERSION = 0xa0;
const TAG_ISSUER_UNIQUE_ID = 0x81;
const TAG_SUBJECT_UNIQUE_ID = 0x82;
const TAG_EXTENSIONS = 0xa3;
const TAG_GENERAL_NAME_URI = 0x86;
/** Low five bits all set: the tag number continues in more bytes (X.690 §8.1.2.4). */
const HIGH_TAG_NUMBER_FORM = 0x1f;
const LONG_LENGTH_FORM = 0x80;

// ---- implementation limits ----
/** Four length bytes reach 4 GiB, far past any certificate; more is refused. */
const MAX_LENGTH_BYTES = 4;

const OID_COMMON_NAME = '2.5.4.3';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const OID_BASIC_CONSTRAINTS = '2.5.29.19';

/** One element: its tag and where its contents lie in the buffer. The next element starts at `end`. */
export interface DerElement {
  tag: number;
  start: number;
  end: number;
}

export interface CertificateFields {
  /** The serial's content octets as lowercase hex, as written (two's complement). */
  serialHex: string;
  issuerCommonNames: string[];
  subjectCommonNames: string[];
  /** Every uniformResourceIdentifier of the subjectAltName extension, in order. */
  sanUris: string[];
  /** basicConstraints cA; false when the extension is absent. */
  basicConstraintsCa: boolean;
}

function malformed(what: string): VertexError {
  return new VertexError('CertificateInvalid', `read certificate: malformed DER, ${what}`);
}

/** Reads the element that starts at `offset` and must end by `limit`. */
export function readElement(der: Uint8Array, offset: number, limit: number): DerElement {
  if (offset + 2 > limit) throw malformed(`element header at ${offset} runs past ${limit}`);
  const tag = der[offset] as number;
  if ((tag & HIGH_TAG_NUMBER_FORM) === HIGH_TAG_NUMBER_FORM) throw malformed(`multi-byte tag at ${offset}`);
  const first = der[offset + 1] as number;
  let start = offset + 2;
  let length = first;
  if (first & LONG_LENGTH_FORM) {
    const count = first & ~LONG_LENGTH_FORM;
    // 0x80 is BER's indefinite length, which DER forbids.
    if (count === 0 || count > MAX_LENGTH_BYTES) throw malformed(`length form 0x${first.toString(16)} at ${offset}`);
    if (start + count > limit) throw malformed(`length bytes at ${offset} run past ${limit}`);
    length = 0;
    for (let i = 0; i < count; i++) length = length * 256 + (der[start + i] as number);
    start += count;
  }
  const end = start + length;
  if (end > limit) throw malformed(`element at ${offset} of ${length} bytes runs past ${limit}`);
  return { tag, start, end };
}

/** The elements directly inside `parent`, in order. */
export function childrenOf(der: Uint8Array, parent: DerElement): DerElement[] {
  const children: DerElement[] = [];
  // Every element takes at least two bytes, so this loop ends within the parent.
  for (let offset = parent.start; offset < parent.end; ) {
    const child = readElement(der, offset, parent.end);
    children.push(child);
    offset = child.end;
  }
  return children;
}

function expectTag(element: DerElement | undefined, tag: number, what: string): DerElement {
  if (!element || element.tag !== tag) {
    const got = element ? `0x${element.tag.toString(16)}` : 'nothing';
    throw malformed(`${what}: expected tag 0x${tag.toString(16)}, got ${got}`);
  }
  return element;
}

/** Dotted form of an OBJECT IDENTIFIER's contents (X.690 §8.19). */
export function decodeOid(der: Uint8Array, element: DerElement): string {
  if (element.start === element.end) throw malformed('empty object identifier');
  const arcs: number[] = [];
  let value = 0;
  for (let i = element.start; i < element.end; i++) {
    const byte = der[i] as number;
    value = value * 128 + (byte & 0x7f);
    if (value > Number.MAX_SAFE_INTEGER / 128) throw malformed('object identifier arc too large');
    if ((byte & 0x80) === 0) {
      if (arcs.length === 0) arcs.push(value < 80 ? Math.floor(value / 40) : 2, value < 80 ? value % 40 : value - 80);
      else arcs.push(value);
      value = 0;
    } else if (i === element.end - 1) {
      throw malformed('object identifier ends inside an arc');
    }
  }
  return arcs.join('.');
}

/** The text of a directory string (X.520) or IA5String. */
function decodeString(der: Uint8Array, element: DerElement, what: string): string {
  const bytes = Buffer.from(der.buffer, der.byteOffset + element.start, element.end - element.start);
  switch (element.tag) {
    case TAG_UTF8_STRING:
      return bytes.toString('utf8');
    case TAG_PRINTABLE_STRING:
    case TAG_IA5_STRING:
    case TAG_NUMERIC_STRING:
    case TAG_VISIBLE_STRING:
    case TAG_TELETEX_STRING:
      return bytes.toString('latin1');
    case TAG_BMP_STRING:
      if (bytes.length % 2 !== 0) throw malformed(`${what}: BMPString of odd length`);
      return Buffer.from(bytes).swap16().toString('utf16le');
    case TAG_UNIVERSAL_STRING: {
      if (bytes.length % 4 !== 0) throw malformed(`${what}: UniversalString length not a multiple of 4`);
      const points: number[] = [];
      for (let i = 0; i < bytes.length; i += 4) {
        const point = bytes.readUInt32BE(i);
        if (point > 0x10ffff) throw malformed(`${what}: UniversalString code point out of range`);
        points.push(point);
      }
      return String.fromCodePoint(...points);
    }
    default:
      throw malformed(`${what}: tag 0x${element.tag.toString(16)} is not a string`);
  }
}

/** The values of every commonName attribute of a Name, in order. */
function commonNames(der: Uint8Array, name: DerElement, what: string): string[] {
  const names: string[] = [];
  for (const rdn of childrenOf(der, name)) {
    expectTag(rdn, TAG_SET, `${what} relative name`);
    for (const attribute of childrenOf(der, rdn)) {
      const [type, value] = childrenOf(der, expectTag(attribute, TAG_SEQUENCE, `${what} attribute`));
      if (decodeOid(der, expectTag(type, TAG_OID, `${what} attribute type`)) !== OID_COMMON_NAME) continue;
      if (!value) throw malformed(`${what} common name without a value`);
      names.push(decodeString(der, value, `${what} common name`));
    }
  }
  return names;
}

function sanUrisOf(der: Uint8Array, value: DerElement): string[] {
  const names = readElement(der, value.start, value.end);
  if (names.end !== value.end) throw malformed('subjectAltName: bytes after the name list');
  const uris: string[] = [];
  for (const name of childrenOf(der, expectTag(names, TAG_SEQUENCE, 'subjectAltName'))) {
    if (name.tag === TAG_GENERAL_NAME_URI) {
      uris.push(Buffer.from(der.buffer, der.byteOffset + name.start, name.end - name.start).toString('latin1'));
    }
  }
  return uris;
}

function basicConstraintsCaOf(der: Uint8Array, value: DerElement): boolean {
  const constraints = readElement(der, value.start, value.end);
  if (constraints.end !== value.end) throw malformed('basicConstraints: bytes after the sequence');
  const [first] = childrenOf(der, expectTag(constraints, TAG_SEQUENCE, 'basicConstraints'));
  if (first?.tag !== TAG_BOOLEAN) return false;
  if (first.end - first.start !== 1) throw malformed('basicConstraints: cA is not one byte');
  // DER writes TRUE as 0xff; any non-zero byte is read as true, as OpenSSL does, so no value hides a CA.
  return der[first.start] !== 0;
}

/** Reads the fields above from a certificate's DER. */
export function readCertificateFields(der: Uint8Array): CertificateFields {
  const certificate = expectTag(readElement(der, 0, der.length), TAG_SEQUENCE, 'certificate');
  const tbs = expectTag(childrenOf(der, certificate)[0], TAG_SEQUENCE, 'tbsCertificate');
  const fields = childrenOf(der, tbs);
  let i = fields[0]?.tag === TAG_VERSION ? 1 : 0;
  const serial = expectTag(fields[i++], TAG_INTEGER, 'serialNumber');
  if (serial.start === serial.end) throw malformed('empty serialNumber');
  expectTag(fields[i++], TAG_SEQUENCE, 'signature algorithm');
  const issuer = expectTag(fields[i++], TAG_SEQUENCE, 'issuer');
  expectTag(fields[i++], TAG_SEQUENCE, 'validity');
  const subject = expectTag(fields[i++], TAG_SEQUENCE, 'subject');
  expectTag(fields[i++], TAG_SEQUENCE, 'subjectPublicKeyInfo');
  if (fields[i]?.tag === TAG_ISSUER_UNIQUE_ID) i++;
  if (fields[i]?.tag === TAG_SUBJECT_UNIQUE_ID) i++;

  const sanUris: string[] = [];
  let basicConstraintsCa = false;
  const extensionsField = fields[i];
  if (extensionsField) {
    expectTag(extensionsField, TAG_EXTENSIONS, 'extensions');
    if (i !== fields.length - 1) throw malformed('fields after the extensions');
    const [list, extra] = childrenOf(der, extensionsField);
    if (extra) throw malformed('more than one extension list');
    const seen = new Set<string>();
    for (const extension of childrenOf(der, expectTag(list, TAG_SEQUENCE, 'extension list'))) {
      const parts = childrenOf(der, expectTag(extension, TAG_SEQUENCE, 'extension'));
      const oid = decodeOid(der, expectTag(parts[0], TAG_OID, 'extension id'));
      // RFC 5280 §4.2: at most one instance of an extension. Two could say different things about the same name.
      if (seen.has(oid)) throw malformed(`extension ${oid} appears twice`);
      seen.add(oid);
      const value = expectTag(parts[parts[1]?.tag === TAG_BOOLEAN ? 2 : 1], TAG_OCTET_STRING, `extension ${oid} value`);
      if (oid === OID_SUBJECT_ALT_NAME) sanUris.push(...sanUrisOf(der, value));
      else if (oid === OID_BASIC_CONSTRAINTS) basicConstraintsCa = basicConstraintsCaOf(der, value);
    }
  }

  return {
    serialHex: Buffer.from(der.buffer, der.byteOffset + serial.start, serial.end - serial.start).toString('hex'),
    issuerCommonNames: commonNames(der, issuer, 'issuer'),
    subjectCommonNames: commonNames(der, subject, 'subject'),
    sanUris,
    basicConstraintsCa,
  };
}
