/** Interactive commands print sentences and a progress bar; the JSON logs drop to warnings unless asked for. */
import { logger } from '../logger.js';

export function quietLogs(): void {
  if (!process.env.VLMFLOW_LOG_LEVEL) logger.level = 'warn';
}
