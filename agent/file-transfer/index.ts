/**
 * File transfer, the front-end behind `vertex send` and `vertex receive`.
 * It is built only on what listenQ2Q/connectQ2Q hand out (a Duplex with
 * .peer and .route), so it is also the proof that the library API is
 * enough for an application.
 */

/** The Q2Q service name a receiver exposes. */
export const FILE_TRANSFER_SERVICE = 'file-transfer';

export { FrameChannel } from './frame-channel';
export { badOfferPaths, badTransferPath, partialPath, PARTIAL_SUFFIX, quoteName } from './names';
export {
  createProgressView, describeProgress, formatBytes, formatEta, progressMode, RateMeter,
  type ProgressMode, type ProgressSnapshot, type ProgressView,
} from './progress';
export {
  DEFAULT_RECEIVE_LIMITS, receiveFiles, type IncomingOffer, type ReceiveLimits, type ReceivedFile, type ReceiveOptions, type ReceiveProgress, type ReceiveResult,
} from './receiver';
export {
  collectSources, hashFile, prepareFiles, sendFiles,
  type PreparedFile, type SendOptions, type SendProgress, type SendResult, type SentFile, type SourceFile,
} from './sender';
