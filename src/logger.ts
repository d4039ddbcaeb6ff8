/** pino JSON logs; callers bind workflow/activity/job ids with `logger.child({...})`. */
import { pino } from 'pino';

// stderr, so the CLI's human output on stdout stays clean and pipeable.
export const logger = pino(
  {
    name: 'vlmflow',
    level: process.env.VLMFLOW_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  },
  pino.destination(2),
);

export type Logger = typeof logger;
