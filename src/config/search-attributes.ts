/**
 * Search attributes the project registers, so runs can be filtered in the Temporal UI's list
 * (e.g. `VlmflowStage = "train"`). Declared once for the dev server, the workflows and docker/.
 */
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';

export const VlmflowModel = defineSearchAttributeKey('VlmflowModel', SearchAttributeType.KEYWORD);
export const VlmflowDataset = defineSearchAttributeKey('VlmflowDataset', SearchAttributeType.KEYWORD);
export const VlmflowStage = defineSearchAttributeKey('VlmflowStage', SearchAttributeType.KEYWORD);
export const VlmflowStatus = defineSearchAttributeKey('VlmflowStatus', SearchAttributeType.KEYWORD);

export const searchAttributes = [VlmflowModel, VlmflowDataset, VlmflowStage, VlmflowStatus];
