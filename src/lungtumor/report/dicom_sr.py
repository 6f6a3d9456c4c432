"""The lesion measurements as a DICOM Structured Report (highdicom, TID 1500): ``<case>_measurements_sr.dcm``.

A Comprehensive 3D SR holding a TID 1500 Measurement Report observed by the lungtumor "device", with one
TID 1411 Volumetric ROI group per lesion. Each group references its segment of the SEG that the same predict
run wrote (segment n = lesion n), carries a tracking identifier ("lesion n") and the finding (SCT 372087000
"Neoplasm, Primary" in SCT 39607008 "Lung"), and holds the lesion's measurements as ``lungtumor measure``
defines them: volume (SCT 118565006, mL), long and short axial axis (SCT 103339001 / 103340004, mm) and the
largest 3D diameter (SCT 81827009 "Diameter", derivation SCT 56851009 "Maximum", mm), each with the
algorithm's name and version. A mask without a lesion gives one TID 1501 group saying "Neoplasm, Primary:
Absent". Codes: docs/decisions/0028-dicom-outputs.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from lungtumor.report.dicom_source import (
    MANUFACTURER,
    SERIES_NUMBER,
    Algorithm,
    SourceSeries,
    carry_deidentification,
)

MILLILITRE = Code("ml", "UCUM", "milliliter")
MILLIMETRE = codes.UCUM.Millimeter
MAXIMUM = Code("56851009", "SCT", "Maximum")
ABSENT = Code("272519000", "SCT", "Absent")
#: (Lesion attribute, concept name, unit, derivation) of each measurement.
MEASUREMENTS = (
    ("volume_ml", codes.SCT.Volume, MILLILITRE, None),
    ("long_axis_mm", codes.SCT.LongAxis, MILLIMETRE, None),
    ("short_axis_mm", codes.SCT.ShortAxis, MILLIMETRE, None),
    ("diameter_3d_mm", codes.SCT.Diameter, MILLIMETRE, MAXIMUM),
)


def _observer(algo: Algorithm) -> hd.sr.ObservationContext:
    """The observation context: the lungtumor algorithm as the observing device."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=generate_uid(), name=algo.name, manufacturer_name=MANUFACTURER, model_name=algo.version
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )


def lesion_group(
    seg: hd.seg.Segmentation, source_series_uid: str, n: int, lesion: object, algo: Algorithm
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The TID 1411 group of lesion ``n`` (a ``lungtumor.evaluation.measure.Lesion``): segment ``n`` of
    ``seg``, segmented from the series ``source_series_uid``."""
    algo_id = hd.sr.AlgorithmIdentification(name=algo.name, version=algo.version)
    site = hd.sr.FindingSite(anatomic_location=codes.SCT.Lung)
    measurements = [
        hd.sr.Measurement(
            name=name,
            value=float(getattr(lesion, attr)),
            unit=unit,
            derivation=derivation,
            algorithm_id=algo_id,
        )
        for attr, name, unit, derivation in MEASUREMENTS
    ]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"lesion {n}"),
        # built here, not with ReferencedSegment.from_segmentation: that reads the segment number from each
        # frame, and a one-segment SEG keeps it in the shared functional groups (highdicom 0.28)
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=n,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        ),
        finding_type=codes.SCT.NeoplasmPrimary,
        finding_sites=[site],
        algorithm_id=algo_id,
        measurements=measurements,
    )


def build_sr(
    source: SourceSeries, seg: hd.seg.Segmentation, lesions: Sequence[object], algo: Algorithm
) -> hd.sr.Comprehensive3DSR:
    """The measurement report of ``lesions`` (lesion n = segment n of ``seg``), in the source's study.

    Args:
        source: the source series (its headers are the SR's evidence with the SEG).
        seg: the Segmentation the lesions' groups reference.
        lesions: ``Lesion`` records (volume_ml, long_axis_mm, short_axis_mm, diameter_3d_mm), largest first.
        algo: the algorithm identification.
    """
    uid = str(source.first.SeriesInstanceUID)
    groups: list = [lesion_group(seg, uid, n, les, algo) for n, les in enumerate(lesions, start=1)]
    if not groups:  # TID 1500 needs a group: "Neoplasm, Primary: Absent" (SCT 272519000)
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier="no tumour found"
                ),
                algorithm_id=hd.sr.AlgorithmIdentification(name=algo.name, version=algo.version),
                qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.SCT.NeoplasmPrimary, ABSENT)],
            )
        ]
    report = hd.sr.MeasurementReport(
        observation_context=_observer(algo),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*source.datasets, seg],
        content=report,
        series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        series_description=algo.description[:64],
    )
    carry_deidentification(sr, source.first)  # highdicom copies PatientIdentityRemoved only
    return sr
